"""The API's HTTP protocol reads an upload's body ahead of the app (api/server.py), through a real uvicorn server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from api.server import uvicorn_options
from selfsup.settings import Settings

BODY = 8 * 1024 * 1024
MIB = 1024 * 1024


class _SlowReader:
    """An ASGI app that reads a request body slowly (a pause before each `receive`) and records each piece's size."""

    def __init__(self) -> None:
        self.pieces: list[int] = []
        self.digest = hashlib.sha256()
        self.pause = 0.05

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        while True:
            await asyncio.sleep(self.pause)
            message = await receive()
            self.pieces.append(len(message.get("body", b"")))
            self.digest.update(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: _SlowReader, http: object) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # connections wait in the backlog until the server has started
        config = uvicorn.Config(app, http=http, log_level="warning", lifespan="off")  # type: ignore[arg-type]
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return int(sock.getsockname()[1])

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def _post(port: int, size: int, body: bytes | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        conn.sendall(b"\0" * size if body is None else body)
        reply = b""
        while not reply.endswith(b"ok"):
            chunk = conn.recv(4096)
            assert chunk, f"the server closed the connection: {reply!r}"
            reply += chunk
    return reply


@pytest.mark.parametrize("read_ahead", [4 * MIB, 2 * MIB])
def test_an_upload_is_read_ahead_of_a_slow_app_up_to_the_setting(serve, read_ahead: int) -> None:
    app = _SlowReader()
    # The protocol `selfsup api` hands uvicorn for this setting.
    protocol = uvicorn_options(Settings(api_receive_buffer_bytes=read_ahead), host="127.0.0.1", port=0)["http"]
    port = serve(app, protocol)  # type: ignore[operator]
    assert _post(port, BODY).startswith(b"HTTP/1.1 200")
    assert sum(app.pieces) == BODY
    # While the app sleeps the server reads on: pieces of MiBs, never much past the setting (one socket read more).
    assert max(app.pieces) > MIB, app.pieces
    assert max(app.pieces) <= read_ahead + MIB, app.pieces


def test_the_body_reaches_the_app_byte_for_byte(serve) -> None:
    """The body waits for the app as the parser's pieces (`_BodyPieces`), joined when the app takes them: nothing is
    lost, doubled or reordered, whether the app is slow (many pieces joined) or not."""
    protocol = uvicorn_options(Settings(), host="127.0.0.1", port=0)["http"]
    body = os.urandom(BODY + 12345)
    for pause in (0.05, 0.0):
        app = _SlowReader()
        app.pause = pause
        port = serve(app, protocol)  # type: ignore[operator]
        assert _post(port, len(body), body).startswith(b"HTTP/1.1 200")
        assert app.digest.hexdigest() == hashlib.sha256(body).hexdigest()
        assert sum(app.pieces) == len(body)


def test_uvicorns_own_protocol_hands_over_small_pieces(serve) -> None:
    """The reference: what the setting changes (uvicorn pauses reading past 64 KiB)."""
    app = _SlowReader()
    port = serve(app, "httptools")  # type: ignore[operator]
    assert _post(port, BODY).startswith(b"HTTP/1.1 200")
    assert sum(app.pieces) == BODY
    assert max(app.pieces) < MIB, app.pieces
