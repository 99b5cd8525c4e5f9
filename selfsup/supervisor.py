"""`selfsup up`: one command that runs the whole service on one machine and keeps it running.

It migrates the database, starts the embedded broker unless SELFSUP_REDIS_URL is set, starts a cpu
worker (with the reconciler), a gpu worker and the API as child processes, restarts any child that
dies, and stops everything on Ctrl-C or SIGTERM.

Once the API answers and both workers consume their queues (each writes a ready file on Celery's
`worker_ready`), it says so in a few lines: where it listens, where its data lives, which database and
broker, how to get a key. In JSON log mode that is one log record with the same fields.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.engine import make_url

from selfsup.broker import EmbeddedBroker
from selfsup.priority import corpus_cores
from selfsup.processes import die_with_parent
from selfsup.settings import Settings

STOP_GRACE_SECONDS = 60.0  # a training worker checkpoints at its next step boundary before it exits
SLOW_START_SECONDS = 120.0  # past this, say what the service still waits for
# The line that says the whole service is up (tests and scripts wait for it).
UP_MESSAGE = "selfsup is up"
KEY_COMMAND = "selfsup keys create --tenant NAME"

log = logging.getLogger("selfsup.up")


@dataclass
class Child:
    """A supervised process."""

    name: str
    argv: list[str]
    ready_file: Path | None = None  # written by a worker once it consumes its queues
    env: dict[str, str] = field(default_factory=dict)  # its own settings, over the service's
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)

    def start(self, env: dict[str, str]) -> None:
        # A process group of its own (Ctrl-C reaches the supervisor alone, which stops the children in order) but
        # selfsup's session: with sched_autogroup the kernel shares the CPU between sessions equally, so only
        # within one session does the cpu worker's lower priority (SELFSUP_CPU_WORKER_NICE) leave training the CPU.
        self.process = subprocess.Popen(self.argv, env={**env, **self.env}, process_group=0, preexec_fn=die_with_parent)
        self.started_at = time.monotonic()

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def ready(self) -> bool:
        """Whether the child says it is ready (a child without a ready file is ready once started)."""
        return self.ready_file.is_file() if self.ready_file is not None else self.process is not None


def describe_database(url: str) -> str:
    """`SQLite at /path` or `PostgreSQL at host:port/db`, without a password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite at {parsed.database}"
    where = f"{parsed.host or 'localhost'}{f':{parsed.port}' if parsed.port else ''}/{parsed.database or ''}"
    return f"{'PostgreSQL' if parsed.get_backend_name() == 'postgresql' else parsed.get_backend_name()} at {where}"


def describe_broker(url: str, *, embedded: bool) -> str:
    """`embedded Valkey at redis://…` or `Redis at redis://…`, without a password."""
    return f"{'embedded Valkey' if embedded else 'Redis'} at {maybe_sanitize_url(url)}"


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
        self.broker_url = settings.redis_url or ""  # the embedded broker's, once started
        self.stopping = False
        self.announced = False
        self.started_at = time.monotonic()
        self.slow_start_reported = False
        cli = [sys.executable, "-m", "selfsup.cli"]
        run = settings.resolved_home / "run"
        self.children = [
            Child(
                "cpu worker",
                [*cli, "worker", "--queues", "cpu", "--beat", "--ready-file", str(run / "cpu-worker.ready")],
                ready_file=run / "cpu-worker.ready",
                # Beside the trainer: corpus work on the cores it leaves (see selfsup/priority.py).
                env={
                    "SELFSUP_CPU_WORKER_THREADS": str(
                        settings.cpu_worker_threads or corpus_cores(settings.torch_threads)
                    )
                },
            ),
            Child(
                "gpu worker",
                [*cli, "worker", "--queues", "gpu", "--ready-file", str(run / "gpu-worker.ready")],
                ready_file=run / "gpu-worker.ready",
            ),
            Child("api", [*cli, "api", "--host", host, "--port", str(port)]),
        ]

    def _stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        """Run until Ctrl-C or SIGTERM; returns the exit code."""
        from storage import migrate

        if not _port_free(self.host, self.port):
            log.error("cannot listen on %s:%s: the port is in use; choose another with --port", self.host, self.port)
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
        self.broker_url = env.get("SELFSUP_REDIS_URL") or self.settings.redis_url or ""
        log.info("starting the workers and the API (data in %s)", home)
        self.started_at = time.monotonic()
        for child in self.children:
            if child.ready_file is not None:
                child.ready_file.unlink(missing_ok=True)
            child.start(env)
        try:
            while not self.stopping:
                self._watch(env)
                if not self.announced:
                    self._announce_when_up()
                time.sleep(0.5)
        finally:
            self._shutdown()
        return 0

    @property
    def url(self) -> str:
        """Where the API listens."""
        return f"http://{self.host}:{self.port}"

    def _api_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def _announce_when_up(self) -> None:
        """Say that the service is up, once the API answers and both workers consume; or what it waits for."""
        waiting = [child.name for child in self.children if not child.ready()]
        if not waiting and not self._api_answers():
            waiting = ["api"]
        if not waiting:
            self.announced = True
            self._announce()
        elif not self.slow_start_reported and time.monotonic() - self.started_at > SLOW_START_SECONDS:
            self.slow_start_reported = True
            log.warning("still waiting for %s to start; see the lines above", ", ".join(waiting))

    def _announce(self) -> None:
        startup = {
            "url": self.url,
            "docs": f"{self.url}/docs",
            "metrics": f"{self.url}/metrics",
            "data_dir": str(self.settings.resolved_home),
            "database": describe_database(self.settings.resolved_database_url),
            "broker": describe_broker(self.broker_url, embedded=self.broker is not None),
            "workers": "cpu (ingest, tokenization, curation) and gpu (training)",
            "create_key": KEY_COMMAND,
        }
        if self.settings.log_format == "json":
            log.info(UP_MESSAGE, extra=startup)
            return
        lines = [
            f"{UP_MESSAGE}",
            f"  API        {startup['url']}   (docs {startup['docs']}, metrics {startup['metrics']})",
            f"  data       {startup['data_dir']}",
            f"  database   {startup['database']}",
            f"  broker     {startup['broker']}",
            f"  workers    {startup['workers']}: ready",
            f"  API key    {KEY_COMMAND}",
            "press Ctrl-C to stop",
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)

    def _watch(self, env: dict[str, str]) -> None:
        if self.broker is not None and not self.broker.alive():
            # Same port, same append-only file: queued messages survive and clients reconnect.
            log.warning("embedded broker exited; starting it again")
            self.broker.start()
        now = time.monotonic()
        for child in self.children:
            code = child.exited()
            if code is None and child.process is not None:
                continue
            if child.process is not None:
                log.warning("%s exited with code %s; restarting", child.name, code)
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
        log.info("stopping")
        for child in self.children:
            self._terminate(child)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        if self.broker is not None:
            self.broker.stop()
        log.info("stopped")
