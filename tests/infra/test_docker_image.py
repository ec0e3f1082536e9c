"""The pipeline image (infra/docker/Dockerfile) must contain every package, without a Docker engine.

No Docker engine runs here, so the image's build is replayed the way Docker would do it: the build context
is the tree filtered by `.dockerignore` (docker-py's own matcher, the one `docker build` via the SDK uses),
the Dockerfile's COPY instructions place it under WORKDIR, and `pip install .` is replayed as
`pip wheel --no-deps` of that directory. The wheel must then import the umbrella CLI and run `iotp --help`
(the image's ENTRYPOINT and CMD) with nothing else of the project on the path.

Before `COPY . .` the Dockerfile listed folders by hand and `loadtest/` (and later `iotp_cli/`) was left
out: every docker-compose service died at start on an ImportError. These tests fail on that Dockerfile.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
from docker.utils.build import exclude_paths
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What must never travel into the build context (size, secrets, local state).
NEVER_IN_CONTEXT = (".git", ".venv", ".iotp", ".env", "test-output", "node_modules", "__pycache__")
MAX_CONTEXT_BYTES = 50 * 1024 * 1024


# ------------------------------------------------------------------------------------------------ helpers
def dockerignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def build_context(root: Path) -> set[str]:
    """Files (POSIX paths relative to ``root``) that Docker would send as the build context."""
    kept = exclude_paths(str(root), dockerignore_patterns(root), dockerfile=str(DOCKERFILE.relative_to(root)))
    return {PurePosixPath(*Path(p).parts).as_posix() for p in kept if (root / p).is_file()}


@dataclass
class Image:
    """What the Dockerfile's instructions amount to, for a single-stage build from a local context."""

    workdir: str = "/"
    files: dict[str, str] = field(default_factory=dict)  # image path -> context path
    runs: list[tuple[str, str]] = field(default_factory=list)  # (workdir, command)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _words(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def _resolve(workdir: str, path: str) -> str:
    return os.path.normpath(path if path.startswith("/") else f"{workdir}/{path}")


def replay_dockerfile(dockerfile: Path, context: set[str]) -> Image:
    image = Image()
    stages = 0
    for keyword, args in _instructions(dockerfile.read_text()):
        if keyword == "FROM":
            stages += 1
            assert stages == 1, "multi-stage Dockerfile: extend replay_dockerfile before relying on this test"
        elif keyword == "WORKDIR":
            image.workdir = _resolve(image.workdir, args)
        elif keyword in ("COPY", "ADD"):
            words = [w for w in _words(args) if not w.startswith("--chown") and not w.startswith("--chmod")]
            assert not any(w.startswith("--") for w in words), f"unsupported {keyword} flag in: {args}"
            *sources, dest = words
            into_dir = dest.endswith("/") or len(sources) > 1
            target = _resolve(image.workdir, dest)
            for source in sources:
                assert not any(c in source for c in "*?["), f"globs in {keyword} are not replayed: {source}"
                src = "" if os.path.normpath(source) == "." else os.path.normpath(source)
                if src in context:  # a file
                    name = f"{target}/{PurePosixPath(src).name}" if into_dir else target
                    image.files[os.path.normpath(name)] = src
                    continue
                prefix = f"{src}/" if src else ""
                matched = [p for p in context if p.startswith(prefix)]
                assert matched, f"{keyword} {source}: not in the build context"
                for path in matched:  # a directory: its contents go into the target
                    image.files[os.path.normpath(f"{target}/{path[len(prefix) :]}")] = path
        elif keyword == "RUN":
            image.runs.append((image.workdir, args))
        elif keyword == "ENTRYPOINT":
            image.entrypoint = _words(args)
        elif keyword == "CMD":
            image.cmd = _words(args)
    return image


def install_dir(image: Image) -> str:
    """The image directory in which the Dockerfile runs `pip install .`."""
    installs = [wd for wd, cmd in image.runs if shlex.split(cmd)[:3] == ["pip", "install", "."]]
    assert len(installs) == 1, f"expected one `RUN pip install .`, found runs: {image.runs}"
    return installs[0]


def materialize(image: Image, root: Path, dest: Path) -> Path:
    """Write the image's files under ``dest`` (as the image root); returns the directory of `pip install .`."""
    for image_path, context_path in image.files.items():
        target = dest / image_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / context_path, target)
    return dest / install_dir(image).lstrip("/")


def declared_packages() -> list[str]:
    """The packages pyproject.toml's [tool.setuptools.packages.find] selects from the source tree."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(find_packages(where=str(ROOT), include=include))


def local_imports(module: Path) -> set[str]:
    """Top-level project packages a module imports, at import time or lazily inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {name for name in names if (ROOT / name / "__init__.py").exists()}


def package_data_dirs() -> list[str]:
    """Source directories whose files are package data (e.g. dashboard_api/static), from pyproject."""
    dirs = set()
    for package, globs in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        for glob in globs:
            parent = PurePosixPath(glob).parent
            dirs.add((PurePosixPath(package.replace(".", "/")) / parent).as_posix())
    return sorted(dirs)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def context() -> set[str]:
    return build_context(ROOT)


@pytest.fixture(scope="module")
def image(context) -> Image:
    return replay_dockerfile(DOCKERFILE, context)


@pytest.fixture(scope="module")
def wheel(image, tmp_path_factory) -> Path:
    """`pip install .` of the image's WORKDIR, as a wheel (no dependencies, no network: the venv's setuptools)."""
    tmp = tmp_path_factory.mktemp("image")
    workdir = materialize(image, ROOT, tmp / "rootfs")
    out = tmp / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"building the image's wheel failed:\n{result.stdout}\n{result.stderr}"
    (built,) = out.glob("*.whl")
    return built


# ------------------------------------------------------------------------------------------------ tests
def test_context_leaves_out_local_state(context):
    leaked = sorted(p for p in context if any(part in NEVER_IN_CONTEXT for part in PurePosixPath(p).parts))
    assert not leaked, f".dockerignore lets these into the build context: {leaked[:20]}"
    size = sum((ROOT / p).stat().st_size for p in context)
    assert size < MAX_CONTEXT_BYTES, f"build context is {size / 1e6:.0f} MB"


def test_every_declared_package_is_copied_into_the_image(image):
    packages = declared_packages()
    assert {"iotp", "iotp_cli", "loadtest", "dashboard_api"} <= set(packages), packages
    workdir = install_dir(image)
    missing = [p for p in packages if f"{workdir}/{p.replace('.', '/')}/__init__.py" not in image.files]
    assert not missing, f"packages missing from the image: {missing}"
    for name in ("pyproject.toml", "README.md"):  # what `pip install .` reads besides the packages
        assert f"{workdir}/{name}" in image.files, f"{name} is not copied"


def test_every_package_the_cli_imports_is_declared_and_copied(image):
    imported = local_imports(ROOT / "iotp_cli" / "main.py")
    assert {"iotp", "loadtest", "dashboard_api", "infra"} <= imported, imported
    declared = {p.split(".")[0] for p in declared_packages()}
    assert imported <= declared, f"imported by iotp_cli.main but not in pyproject: {imported - declared}"
    workdir = PurePosixPath(install_dir(image))
    copied = {
        PurePosixPath(path).relative_to(workdir).parts[0]
        for path in image.files
        if path.endswith("/__init__.py") and PurePosixPath(path).is_relative_to(workdir)
    }
    assert imported <= copied, f"imported by iotp_cli.main but not in the image: {imported - copied}"


def test_wheel_ships_every_package_data_file(context, wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = sorted(p for d in package_data_dirs() for p in context if p.startswith(f"{d}/"))
    assert any(p.startswith("dashboard_api/static/") for p in expected), expected
    missing = [p for p in expected if p not in names]
    assert not missing, f"package data missing from the wheel (fix [tool.setuptools.package-data]): {missing}"


def test_image_entrypoint_runs_from_the_wheel_alone(image, wheel, tmp_path):
    """`iotp --help` from the wheel's files plus the third-party packages, with no project source on the path."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
        entry_points = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    assert image.entrypoint, "the Dockerfile has no ENTRYPOINT"
    script = image.entrypoint[0]
    line = next((x for x in scripts.splitlines() if x.split("=")[0].strip() == script), None)
    assert line, f"ENTRYPOINT {script!r} is not a console script of the wheel:\n{scripts}"
    module, _, func = line.split("=", 1)[1].strip().partition(":")
    # -S: no site processing, so the venv's editable install of this tree (a .pth finder) is not active;
    # the third-party packages come from the venv's site-packages, the project only from the wheel.
    site_packages = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), site_packages])}
    env.pop("PYTHONHOME", None)
    code = (
        "import sys, importlib\n"
        f"mod = importlib.import_module({module!r})\n"
        f"assert mod.__file__.startswith({str(tmp_path / 'site')!r}), mod.__file__\n"
        f"sys.argv = [{script!r}, *{image.cmd!r}]\n"
        f"getattr(mod, {func!r})()\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"`{script} {' '.join(image.cmd)}` failed in the image:\n{result.stderr[-3000:]}"
    for command in ("simulate", "gateway", "stream", "api", "sink", "loadtest", "stack"):
        assert command in result.stdout, f"`{command}` missing from `iotp --help`:\n{result.stdout}"
