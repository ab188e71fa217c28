"""An openpi policy server: the server side of the websocket protocol that
:mod:`pld_ros.policies.openpi_client` speaks (its module doc has the wire format).

It answers each request with whatever a policy function returns, so a simulation can stand in
for a VLA server (the yam_gpu_insertion world's scripted expert, in ``sim_world``) and tests can
serve chunks of their own. As openpi's ``serve_policy.py`` does: the metadata is the first
message of every connection; one binary answer per request; when the policy raises, the answer
is a text message (the traceback) and the connection is closed with code 1011, so the client
sees a clear failure rather than a hold.

Each connection is served in a thread of its own: a policy function called from several
clients at once must be thread-safe.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from pld_ros.policies.openpi_client import pack, unpack

_log = logging.getLogger(__name__)

PolicyFunction = Callable[[dict[str, Any]], Mapping[str, Any]]
"""A request (the observation dict, numpy values restored) -> the answer (e.g. ``{"actions": H x D}``)."""

INTERNAL_ERROR = 1011
"""Websocket close code after a failed request (openpi's server uses it too)."""


class OpenpiServer:
    """Serves a policy function over the openpi protocol from background threads.

    ``host`` / ``port``: where to listen (port 0: any free port, see :attr:`port` after
    :meth:`start`). ``metadata``: what each client gets on connect.
    """

    def __init__(
        self,
        policy: PolicyFunction,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.metadata = dict(metadata or {})
        self._policy = policy
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.connections = 0
        """Connections accepted so far."""
        self.answered = 0
        """Requests answered with the policy's output (counted as the answer is sent)."""
        self.failed = 0
        """Requests the policy (or the request's encoding) failed on."""
        self.last_error = ""
        """The last line of the last failure's traceback."""

    @property
    def uri(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> OpenpiServer:
        """Listen (on the same port as before after a :meth:`stop`, so that clients find it again).

        Raises OSError when the address cannot be bound (in use, or not this machine's)."""
        if self._server is not None:
            raise RuntimeError(f"{self.uri} is already being served")
        server = serve(self._handle, self.host, self.port, compression=None, max_size=None)
        self.port = int(server.socket.getsockname()[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="openpi-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection (as a killed server would); idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def respond(self, connection: ServerConnection, request: dict[str, Any]) -> bool:
        """Answer one request; False ends the connection (after a failure)."""
        try:
            answer = pack(self._policy(request))
        except Exception:
            # Anything the policy raises is the client's answer, as in openpi; the server goes on.
            self._refuse(connection, traceback.format_exc())
            return False
        with self._lock:
            self.answered += 1
        connection.send(answer)
        return True

    def _refuse(self, connection: ServerConnection, text: str) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = text.strip().splitlines()[-1]
        _log.warning("policy request failed: %s", self.last_error)
        connection.send(text)
        connection.close(code=INTERNAL_ERROR, reason="internal error")

    def _handle(self, connection: ServerConnection) -> None:
        with self._lock:
            self.connections += 1
        try:
            connection.send(pack(self.metadata))
            while True:
                message = connection.recv(decode=False)
                try:
                    request = unpack(message)
                    if not isinstance(request, dict):
                        raise TypeError(f"a request is a map, got a {type(request).__name__}")
                except (ValueError, TypeError):
                    self._refuse(connection, traceback.format_exc())
                    return
                if not self.respond(connection, request):
                    return
        except ConnectionClosed:
            return
