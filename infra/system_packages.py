"""Find the service binaries that come from Debian packages, installing them with apt when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# binary -> Debian package
SERVICE_BINARIES = {"mosquitto": "mosquitto", "redis-server": "redis-server"}


class InstallError(RuntimeError):
    pass


def find_binary(name: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    return Path(found) if found else None


def ensure_binaries(names: list[str] | None = None) -> dict[str, Path]:
    """Return the path of each binary, installing missing Debian packages first (as root)."""
    names = names or list(SERVICE_BINARIES)
    missing = [n for n in names if find_binary(n) is None]
    if missing:
        packages = sorted({SERVICE_BINARIES[n] for n in missing})
        command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise InstallError(f"missing {', '.join(missing)}; install with: sudo {' '.join(command)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], command):
            result = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                raise InstallError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    paths = {n: find_binary(n) for n in names}
    still = [n for n, p in paths.items() if p is None]
    if still:
        raise InstallError(f"installed, but cannot find {', '.join(still)} on PATH")
    return {n: p for n, p in paths.items() if p is not None}
