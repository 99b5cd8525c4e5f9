"""How the API is served: uvicorn's httptools protocol, reading further ahead of an upload.

uvicorn stops reading a connection once 64 KiB of its request body wait for the app, and reads again when the app
asks for more. For a large upload that is a pause, a wake-up of the app and a resume for every 64 KiB, and it capped
receiving at about 430-560 MB/s on a 2-vCPU machine however fast the disk (`bench/blobs.py`). Reading up to
`SELFSUP_API_RECEIVE_BUFFER_BYTES` ahead (4 MiB) hands the app a few MiB at a time and receives about 1.45x as fast
(same machine, a body-discarding app: 420-450 against 610-700 MB/s). A connection then holds up to that much more
memory while its upload arrives; small requests are unaffected.

The waiting body is also kept as the parser's pieces, joined once when the app takes it, rather than appended to a
bytearray and copied out of it (`_BodyPieces`): one copy less of every byte received.

uvicorn takes the protocol as a class (`http=`), so this is its own class with one method extended, not a patch of
uvicorn's module constant (which would change every server in the process).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from selfsup.settings import Settings


class _BodyPieces:
    """A request body waiting for the app, kept as the pieces the parser made: uvicorn appends each to a bytearray
    (a copy) and hands the app `bytes(...)` of it (another); this joins them once, and hands over a lone piece as it
    is. uvicorn uses the waiting body only through `+=`, `len` and `bytes()`. With 4 MiB read ahead, one copy less
    of every uploaded byte took the API from 1.47-1.58 to 1.24-1.29 CPU s per GiB (bench/README.md)."""

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0

    def __iadd__(self, piece: bytes) -> _BodyPieces:
        self.pieces.append(piece)
        self.size += len(piece)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)


class _ReadAheadProtocol(HttpToolsProtocol):
    read_ahead_bytes = 4 * 1024 * 1024

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.body, _BodyPieces):
            # A new request, or the app just took the body: uvicorn's empty bytearray, replaced before it holds bytes.
            cycle.body = _BodyPieces()  # type: ignore[assignment]
        super().on_body(body)
        # uvicorn paused reading past its own 64 KiB; read on while the body waiting for the app is under ours.
        if self.flow.read_paused and self.cycle is not None and len(self.cycle.body) <= self.read_ahead_bytes:
            self.flow.resume_reading()


def http_protocol(read_ahead_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's `http=`: the httptools protocol reading up to `read_ahead_bytes` of a request body ahead."""
    return type("ReadAheadHttpToolsProtocol", (_ReadAheadProtocol,), {"read_ahead_bytes": read_ahead_bytes})


def uvicorn_options(settings: Settings, *, host: str, port: int) -> dict[str, Any]:
    """What `selfsup api` passes to `uvicorn.run` with the app's import string."""
    return {
        "factory": True,
        "host": host,
        "port": port,
        # uvicorn's loggers go through selfsup's set-up (text or JSON, with request ids), at the levels cli sets.
        "log_config": None,
        "log_level": None,
        "http": http_protocol(settings.api_receive_buffer_bytes),
        "timeout_graceful_shutdown": 10,
        # Past this many open connections new ones get 503 at once instead of piling up.
        "limit_concurrency": settings.api_max_connections,
        "backlog": settings.api_max_connections,
        # uvicorn's 5 s equals httpx's pool expiry: a request sent on a connection idle for ~5 s raced the
        # server's close and got "Server disconnected without sending a response" (seen in CI).
        "timeout_keep_alive": settings.api_keepalive_seconds,
    }
