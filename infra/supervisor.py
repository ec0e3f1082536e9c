"""A thin wrapper around supervisord: write a config for a set of programs, start it, control it.

supervisord keeps the services running after the CLI exits, restarts them when they die, and keeps
their logs; we talk to it over its XML-RPC unix socket.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from iotp.processes import pid_alive


@dataclass(frozen=True)
class Program:
    name: str
    command: list[str]
    group: str
    autostart: bool = True
    env: dict[str, str] = field(default_factory=dict)
    priority: int = 100
    stopwaitsecs: int = 15


def _env_line(env: dict[str, str]) -> str:
    def quote(value: str) -> str:
        return '"' + value.replace("%", "%%").replace('"', '\\"') + '"'

    return ",".join(f"{key}={quote(value)}" for key, value in sorted(env.items()))


class Supervisor:
    """One supervisord instance whose files live under ``run_dir``."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir.resolve()
        self.conf = self.run_dir / "supervisord.conf"
        self.sock = self.run_dir / "supervisor.sock"
        self.pidfile = self.run_dir / "supervisord.pid"
        self.log_dir = self.run_dir / "logs"

    # ----------------------------------------------------------------- config
    def write_config(self, programs: list[Program]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "[unix_http_server]",
            f"file={self.sock}",
            "",
            "[supervisord]",
            f"logfile={self.log_dir / 'supervisord.log'}",
            f"pidfile={self.pidfile}",
            f"directory={Path.cwd()}",
            "nodaemon=false",
            "silent=true",
            "minfds=4096",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.sock}",
            "",
        ]
        groups: dict[str, list[str]] = {}
        for prog in programs:
            groups.setdefault(prog.group, []).append(prog.name)
            lines += [
                f"[program:{prog.name}]",
                f"command={shlex.join(prog.command)}",
                f"autostart={'true' if prog.autostart else 'false'}",
                "autorestart=true",
                "startsecs=1",
                "startretries=5",
                f"priority={prog.priority}",
                f"stopwaitsecs={prog.stopwaitsecs}",
                "stopsignal=TERM",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={self.log_dir / (prog.name + '.log')}",
                "stdout_logfile_maxbytes=20MB",
                "stdout_logfile_backups=2",
            ]
            if prog.env:
                lines.append(f"environment={_env_line(prog.env)}")
            lines.append("")
        for group, names in groups.items():
            lines += [f"[group:{group}]", f"programs={','.join(names)}", ""]
        self.conf.write_text("\n".join(lines))

    # ---------------------------------------------------------------- control
    def _proxy(self) -> Any:  # XML-RPC answers are untyped: typeshed's union of every marshallable type
        transport = SupervisorTransport(None, None, f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def running(self) -> bool:
        if not self.sock.exists():
            return False
        try:
            return self._proxy().supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault):
            return False

    def start_daemon(self, timeout: float = 15.0) -> None:
        """Start supervisord (or reload its config if it already runs)."""
        if self.running():
            rpc = self._proxy().supervisor
            added, changed, removed = rpc.reloadConfig()[0]
            for name in removed + changed:
                rpc.stopProcessGroup(name)
                rpc.removeProcessGroup(name)
            for name in added + changed:
                rpc.addProcessGroup(name)
            return
        supervisord = Path(sys.executable).with_name("supervisord")
        cmd = [str(supervisord) if supervisord.exists() else "supervisord", "-c", str(self.conf)]
        subprocess.run(cmd, check=True, env={**os.environ})
        deadline = time.monotonic() + timeout
        while not self.running():
            if time.monotonic() > deadline:
                raise TimeoutError(f"supervisord did not start; see {self.log_dir / 'supervisord.log'}")
            time.sleep(0.1)

    def start_group(self, group: str) -> None:
        self._proxy().supervisor.startProcessGroup(group, True)

    def stop_group(self, group: str) -> None:
        self._proxy().supervisor.stopProcessGroup(group, True)

    def _qualified(self, name: str) -> str:
        """supervisord names a process of a group ``group:name``."""
        if ":" in name:
            return name
        for info in self.processes():
            if info["name"] == name:
                return f"{info['group']}:{name}"
        raise KeyError(f"no program {name!r} in {self.conf}")

    def start(self, name: str) -> None:
        self._proxy().supervisor.startProcess(self._qualified(name), True)

    def stop(self, name: str) -> None:
        self._proxy().supervisor.stopProcess(self._qualified(name), True)

    def signal(self, name: str, signal_name: str) -> None:
        """Send a signal (e.g. ``HUP``) to one program's process."""
        self._proxy().supervisor.signalProcess(self._qualified(name), signal_name)

    def processes(self) -> list[dict]:
        if not self.running():
            return []
        return self._proxy().supervisor.getAllProcessInfo()

    def shutdown(self, timeout: float = 60.0) -> None:
        if not self.running():
            return
        pid = int(self.pidfile.read_text()) if self.pidfile.exists() else None
        self._proxy().supervisor.shutdown()
        deadline = time.monotonic() + timeout
        while pid and pid_alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError("supervisord did not stop in time")
            time.sleep(0.1)
