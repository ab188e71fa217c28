"""A local stand-in for an openpi policy server (for tests and benches): the package's
:class:`~pld_ros.policies.openpi_server.OpenpiServer` with a chunk generator as its policy.

No VLA can run here: the "policy" is a chunk generator, with a configurable latency standing in
for the model's inference time, and faults on demand (a dropped connection, a failed inference).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from websockets.sync.server import ServerConnection

from pld_ros.core.observation import ACTION_DIM
from pld_ros.policies.openpi_server import OpenpiServer

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


class OpenpiTestServer(OpenpiServer):
    """An openpi-protocol server on 127.0.0.1 in a thread of the test process.

    ``latency``: seconds each answer takes. ``drop_after``: answer that many requests, then drop
    the connection instead of answering the next one (once). ``fail_after``: likewise, but fail
    the inference, which the server answers with its error text as openpi's server does.
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
        super().__init__(
            self._infer, port=port, metadata=metadata if metadata is not None else {"policy": "test_ramp"}
        )
        self.latency = latency
        self.chunks = chunks or ramp_chunk(10)
        self.drop_after = drop_after
        self.fail_after = fail_after
        self.requests: list[dict[str, Any]] = []
        self._faults = threading.Lock()

    def start(self) -> OpenpiTestServer:
        super().start()
        return self

    def respond(self, connection: ServerConnection, request: dict[str, Any]) -> bool:
        with self._faults:
            drop = self.drop_after is not None and len(self.requests) >= self.drop_after
            if drop:
                self.drop_after = None
                self.requests.append(request)
        if drop:
            return False  # the server closes the connection without answering
        return super().respond(connection, request)

    def _infer(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._faults:
            self.requests.append(request)
            number = len(self.requests)
            fail = self.fail_after is not None and number > self.fail_after
            if fail:
                self.fail_after = None
        if fail:
            raise RuntimeError("test failure")
        time.sleep(self.latency)
        return {"actions": self.chunks(request, number), "server_timing": {"infer_ms": self.latency * 1e3}}
