"""A local stand-in for an openpi policy server, speaking its websocket protocol (for tests and benches).

No VLA can run here: the "policy" is a chunk generator, with a configurable latency standing in
for the model's inference time. The wire format is the one pld_ros.policies.openpi_client
documents (and that module's pack / unpack are reused: the test of the encoding itself checks
them against hand-built messages).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from pld_ros.core.observation import ACTION_DIM
from pld_ros.policies.openpi_client import pack, unpack

ChunkGenerator = Callable[[dict[str, Any], int], np.ndarray]
"""(request, number of the request since the server started, from 1) -> H x D actions."""


def ramp_chunk(horizon: int) -> ChunkGenerator:
    """Chunks whose row i moves ``0.001 * (i + 1)`` m in x; column 1 holds the request number."""

    def generate(_request: dict[str, Any], number: int) -> np.ndarray:
        actions = np.zeros((horizon, ACTION_DIM), dtype=np.float32)
        actions[:, 0] = 0.001 * np.arange(1, horizon + 1)
        actions[:, 1] = number
        actions[:, 6] = 0.5
        return actions

    return generate


class OpenpiTestServer:
    """An openpi-protocol server on 127.0.0.1 in a thread of the test process.

    ``latency``: seconds each answer takes. ``drop_after``: answer that many requests, then drop
    the connection instead of answering the next one (once). ``fail_after``: likewise, but answer
    with an error text as openpi's server does when inference raises.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        latency: float = 0.0,
        chunks: ChunkGenerator | None = None,
        metadata: dict[str, Any] | None = None,
        drop_after: int | None = None,
        fail_after: int | None = None,
    ) -> None:
        self.port = port
        self.latency = latency
        self.chunks = chunks or ramp_chunk(10)
        self.metadata = metadata if metadata is not None else {"policy": "test_ramp"}
        self.drop_after = drop_after
        self.fail_after = fail_after
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> OpenpiTestServer:
        """Listen (on the same port as before after a stop, so that clients find it again)."""
        assert self._server is None, "already running"
        server = serve(self._handle, "127.0.0.1", self.port, compression=None, max_size=None)
        self.port = int(server.socket.getsockname()[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, as a killed server would."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _handle(self, connection: ServerConnection) -> None:
        with self._lock:
            self.connections += 1
        try:
            connection.send(pack(self.metadata))
            while True:
                request = unpack(connection.recv(decode=False))
                with self._lock:
                    self.requests.append(request)
                    number = len(self.requests)
                    drop = self.drop_after is not None and number > self.drop_after
                    fail = self.fail_after is not None and number > self.fail_after
                    if drop:
                        self.drop_after = None
                    if fail:
                        self.fail_after = None
                if drop:
                    return  # the server closes the connection without answering
                if fail:
                    connection.send("Traceback (most recent call last):\nRuntimeError: test failure")
                    connection.close(code=1011, reason="internal error")
                    return
                time.sleep(self.latency)
                actions = self.chunks(request, number)
                connection.send(pack({"actions": actions, "server_timing": {"infer_ms": self.latency * 1e3}}))
        except ConnectionClosed:
            return
