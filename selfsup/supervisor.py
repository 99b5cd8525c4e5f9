"""`selfsup up`: one command that runs the whole service on one machine and keeps it running.

It migrates the database, starts the embedded broker unless SELFSUP_REDIS_URL is set, starts a cpu
worker (with the reconciler), a gpu worker and the API as child processes, restarts any child that
dies, and stops everything on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from types import FrameType

from selfsup.broker import EmbeddedBroker
from selfsup.processes import die_with_parent
from selfsup.settings import Settings

STOP_GRACE_SECONDS = 60.0  # a training worker checkpoints at its next step boundary before it exits


@dataclass
class Child:
    """A supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(self.argv, env=env, start_new_session=True, preexec_fn=die_with_parent)
        self.started_at = time.monotonic()

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()


def _say(message: str) -> None:
    print(f"selfsup: {message}", file=sys.stderr, flush=True)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Supervisor:
    """Starts, watches and stops selfsup's processes."""

    def __init__(self, settings: Settings, *, host: str, port: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.broker: EmbeddedBroker | None = None
        self.stopping = False
        cli = [sys.executable, "-m", "selfsup.cli"]
        self.children = [
            Child("cpu worker", [*cli, "worker", "--queues", "cpu", "--beat"]),
            Child("gpu worker", [*cli, "worker", "--queues", "gpu"]),
            Child("api", [*cli, "api", "--host", host, "--port", str(port)]),
        ]

    def _stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        """Run until Ctrl-C or SIGTERM; returns the exit code."""
        from storage import migrate

        if not _port_free(self.host, self.port):
            _say(f"cannot listen on {self.host}:{self.port}: the port is in use; choose another with --port")
            return 1
        signal.signal(signal.SIGINT, self._stop_signal)
        signal.signal(signal.SIGTERM, self._stop_signal)
        home = self.settings.resolved_home
        home.mkdir(parents=True, exist_ok=True)
        migrate.upgrade()
        env = dict(os.environ, SELFSUP_HOME=str(home))
        if not self.settings.redis_url:
            self.broker = EmbeddedBroker(self.settings)
            env["SELFSUP_REDIS_URL"] = self.broker.start()
            _say(f"embedded broker (Valkey) at {self.broker.url}, data in {self.broker.dir}")
        for child in self.children:
            child.start(env)
        self._announce()
        try:
            while not self.stopping:
                self._watch(env)
                time.sleep(0.5)
        finally:
            self._shutdown()
        return 0

    def _announce(self) -> None:
        url = f"http://{self.host}:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stopping:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        _say(f"listening on {url}  (API docs: {url}/docs, data: {self.settings.resolved_home})")
        _say("create an API key with:  selfsup keys create --tenant NAME")
        _say("press Ctrl-C to stop")

    def _watch(self, env: dict[str, str]) -> None:
        if self.broker is not None and not self.broker.alive():
            # Same port, same append-only file: queued messages survive and clients reconnect.
            _say("embedded broker exited; starting it again")
            self.broker.start()
        now = time.monotonic()
        for child in self.children:
            code = child.exited()
            if code is None and child.process is not None:
                continue
            if child.process is not None:
                _say(f"{child.name} exited with code {code}; restarting")
                # Back off when a child keeps dying right after it starts.
                quick = now - child.started_at < 10
                child.restarts = child.restarts + 1 if quick else 0
                child.next_start = now + min(30.0, 0.5 * 2**child.restarts) if quick else now
                child.process = None
            if now >= child.next_start:
                child.start(env)

    def _terminate(self, child: Child) -> None:
        if child.process is not None and child.process.poll() is None:
            child.process.terminate()

    def _shutdown(self) -> None:
        _say("stopping")
        for child in self.children:
            self._terminate(child)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _say(f"{child.name} did not stop in time; killing it")
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        if self.broker is not None:
            self.broker.stop()
        _say("stopped")
