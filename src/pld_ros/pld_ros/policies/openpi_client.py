"""The openpi policy-server backend (pi0, pi0.5): our own client of openpi's websocket protocol.

openpi ships a reference client, the ``openpi-client`` package, but it pins ``numpy < 2``; this
project runs numpy 2, so it speaks the (small) protocol itself instead of depending on it.

Wire format, as openpi's ``serve_policy.py`` server speaks it:

- One websocket connection (``ws://host:port``, no compression, no message size limit) carries
  any number of requests, one at a time.
- On connect, the server sends one binary message: its metadata, a msgpack map.
- Each request is one binary message: the observation, a msgpack map from key to value. Each
  answer is one binary message: a msgpack map holding the action chunk (``H x D`` array) under
  the actions key, plus whatever else the server adds (e.g. ``server_timing``).
- If inference fails, the server answers with a *text* message (its traceback) and closes the
  connection (code 1011).
- numpy values travel as msgpack maps (openpi's ``msgpack_numpy``; keys are msgpack binary
  strings, other strings are msgpack str):

  - array: ``{b"__ndarray__": True, b"data": <C-order bytes>, b"dtype": dtype.str (e.g. "<f4",
    "|u1"), b"shape": [dims]}``
  - scalar: ``{b"__npgeneric__": True, b"data": <the Python value>, b"dtype": dtype.str}``

  Object, void (structured) and complex dtypes are refused, so no pickle is ever involved.

The keys of the observation (one image per view, H x W x 3 uint8; the proprioception vector,
float32; the prompt, str) and of the answer come from the profile
(:class:`pld_ros.profile.OpenpiKeys`), since they depend on the server's policy config.

A lost connection is a fault, not an end: the call that notices it raises
:class:`OpenpiConnectionError`, and the next call reconnects; while the server stays away,
calls fail at once (without touching the network) until the backoff delay has passed, which
doubles after each failed attempt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from pld_ros.core.observation import Float32Array, Observation
from pld_ros.policies.base_policy import PolicyOutputError
from pld_ros.profile import BasePolicy as BasePolicyConfig

_ARRAY = "__ndarray__"
_SCALAR = "__npgeneric__"
_REFUSED_KINDS = ("V", "O", "c")


class OpenpiConnectionError(ConnectionError):
    """No connection to the policy server (never made, lost, or waiting to retry)."""


class OpenpiServerError(RuntimeError):
    """The policy server failed on a request and said why (its traceback)."""


class OpenpiProtocolError(ValueError):
    """A message that does not follow the protocol."""


def _encode_numpy(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        if value.dtype.kind in _REFUSED_KINDS:
            raise TypeError(f"cannot send a numpy value of dtype {value.dtype} to an openpi server")
        if isinstance(value, np.ndarray):
            return {
                _ARRAY.encode(): True,
                b"data": np.ascontiguousarray(value).tobytes(),
                b"dtype": value.dtype.str,
                b"shape": list(value.shape),
            }
        return {_SCALAR.encode(): True, b"data": value.item(), b"dtype": value.dtype.str}
    raise TypeError(f"cannot send a {type(value).__name__} to an openpi server")


def _decode_numpy(value: dict[Any, Any]) -> Any:
    # Keys arrive as bytes from openpi's packer; accept str too (other msgpack implementations).
    fields = {key.decode() if isinstance(key, bytes) else key: item for key, item in value.items()}
    if not (fields.get(_ARRAY) is True or fields.get(_SCALAR) is True):
        return value
    try:
        dtype = np.dtype(fields["dtype"])
        if dtype.kind in _REFUSED_KINDS:
            raise ValueError(f"dtype {dtype} is not allowed")
        if fields.get(_ARRAY) is True:
            return np.frombuffer(fields["data"], dtype=dtype).reshape([int(d) for d in fields["shape"]])
        return dtype.type(fields["data"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OpenpiProtocolError(f"malformed numpy value in a message: {exc!r}") from None


def pack(message: Mapping[str, Any]) -> bytes:
    """A message (str keys; numpy arrays and scalars allowed as values) in openpi's encoding."""
    packed: bytes = msgpack.packb(message, default=_encode_numpy, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    """A message in openpi's encoding, numpy values restored (arrays are read-only views)."""
    try:
        return msgpack.unpackb(data, object_hook=_decode_numpy, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as exc:
        if isinstance(exc, OpenpiProtocolError):
            raise
        raise OpenpiProtocolError(f"not a msgpack message: {exc}") from None


class OpenpiClient:
    """One connection to an openpi policy server, re-made when lost; used from one thread."""

    def __init__(
        self,
        uri: str,
        *,
        open_timeout: float = 2.0,
        request_timeout: float = 10.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        ``open_timeout``: seconds a connection attempt (and the metadata) may take.
        ``request_timeout``: seconds one answer may take; after that the connection is dropped,
        since a late answer would otherwise be taken for the next request's.
        ``backoff_initial`` / ``backoff_max``: wait after the first failed connection attempt,
        doubled after each further one up to the maximum, s.
        """
        if not uri.startswith(("ws://", "wss://")):
            raise ValueError(f"an openpi server URI starts with ws:// or wss://, got {uri!r}")
        self.uri = uri
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._clock = clock
        self._lock = threading.Lock()
        self._connection: ClientConnection | None = None
        self._retry_at = 0.0
        self._delay = backoff_initial
        self._last_error = ""
        self.metadata: dict[str, Any] = {}
        """What the server sent on connect (empty until connected)."""
        self.connections = 0
        """Connections made so far (1 + reconnects)."""

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def infer(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one observation, return the server's answer (a dict with numpy arrays)."""
        connection = self._connect()
        try:
            connection.send(pack(request))
            reply = connection.recv(timeout=self.request_timeout)
        except TimeoutError:
            self._drop(retry_now=True)
            raise OpenpiConnectionError(
                f"{self.uri} did not answer within {self.request_timeout} s; reconnecting"
            ) from None
        except (ConnectionClosed, OSError) as exc:
            self._drop(retry_now=True)
            raise OpenpiConnectionError(f"lost the connection to {self.uri}: {exc}") from None
        if isinstance(reply, str):
            self._drop(retry_now=True)
            raise OpenpiServerError(f"policy server {self.uri} failed on the request:\n{reply}")
        answer = unpack(reply)
        if not isinstance(answer, dict):
            raise OpenpiProtocolError(f"{self.uri} answered a {type(answer).__name__}, expected a map")
        return answer

    def _connect(self) -> ClientConnection:
        if self._connection is not None:
            return self._connection
        now = self._clock()
        if now < self._retry_at:
            raise OpenpiConnectionError(
                f"not connected to {self.uri}; next attempt in {self._retry_at - now:.1f} s "
                f"(last error: {self._last_error})"
            )
        try:
            connection = connect(self.uri, open_timeout=self.open_timeout, compression=None, max_size=None)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            raise OpenpiConnectionError(f"cannot connect to {self.uri}: {self._last_error}") from None
        try:
            metadata = unpack(_binary(connection.recv(timeout=self.open_timeout)))
        except (TimeoutError, ConnectionClosed, OSError, OpenpiProtocolError) as exc:
            connection.close()
            self._failed(f"no metadata: {type(exc).__name__}: {exc}")
            raise OpenpiConnectionError(f"{self.uri} sent no metadata: {self._last_error}") from None
        self.metadata = metadata if isinstance(metadata, dict) else {}
        self._delay = self.backoff_initial
        self.connections += 1
        with self._lock:
            self._connection = connection
        return connection

    def _failed(self, error: str) -> None:
        self._last_error = error
        self._retry_at = self._clock() + self._delay
        self._delay = min(2.0 * self._delay, self.backoff_max)

    def _drop(self, *, retry_now: bool) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        if retry_now:
            self._retry_at = 0.0

    def close(self) -> None:
        """Close the connection (from any thread); a later call would reconnect."""
        self._drop(retry_now=False)


def _binary(message: str | bytes) -> bytes:
    if isinstance(message, str):
        raise OpenpiProtocolError(f"expected a binary message, got text: {message[:200]!r}")
    return message


class OpenpiPolicy:
    """The base policy served by an openpi policy server (``config.uri``)."""

    def __init__(self, config: BasePolicyConfig, client: OpenpiClient | None = None) -> None:
        if config.uri is None:
            raise ValueError("the openpi backend needs 'uri'")
        self.config = config
        self.client = client if client is not None else OpenpiClient(config.uri)

    @property
    def name(self) -> str:
        return f"openpi:{self.client.uri}"

    @property
    def connected(self) -> bool:
        return self.client.connected

    def request(self, observation: Observation) -> dict[str, Any]:
        """The observation dict sent to the server, keyed as the profile says."""
        keys = self.config.openpi
        missing = [view for view in self.config.views if view not in observation.views]
        if missing:
            raise KeyError(f"observation has no view {', '.join(missing)}")
        request: dict[str, Any] = {
            keys.image_key(view): np.ascontiguousarray(observation.views[view], dtype=np.uint8)
            for view in self.config.views
        }
        request[keys.state] = np.asarray(observation.proprio, dtype=np.float32)
        request[keys.prompt] = observation.prompt
        return request

    def infer(self, observation: Observation) -> Float32Array:
        answer = self.client.infer(self.request(observation))
        key = self.config.openpi.actions
        if key not in answer:
            raise PolicyOutputError(
                f"{self.name}: the answer has no {key!r} (keys: {sorted(map(str, answer))})"
            )
        return np.asarray(answer[key], dtype=np.float32)

    def reset(self) -> None:
        """Nothing to do: an openpi server keeps no state between requests of one client."""

    def close(self) -> None:
        self.client.close()
