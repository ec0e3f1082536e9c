"""Run pipeline components as real subprocesses (``python -m iotp_cli <command>``) with the test settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from infra.stack import settings_env
from iotp.settings import Settings
from tests.support.services import as_role

# Commands that connect to MQTT with an account of their own (the others use the settings as given).
MQTT_ROLES = {"gateway": "gateway", "simulate": "simulator", "loadtest": "simulator"}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class ProcessGroup:
    """Starts components; stops all of them at teardown."""

    settings: Settings
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self, command: str, *args: str, env: dict[str, str] | None = None, settings: Settings | None = None
    ) -> Proc:
        """Start ``iotp <command> <args>``; ``settings`` overrides the group's settings for this one."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = command
        log = self.log_dir / f"{name}-{len(self.procs)}.log"
        settings = settings or self.settings
        if command in MQTT_ROLES:
            settings = as_role(settings, MQTT_ROLES[command])
        full_env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1", **(env or {})}
        handle = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, "-m", "iotp_cli", command, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate(timeout=20)
