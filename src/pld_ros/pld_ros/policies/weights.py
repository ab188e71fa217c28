"""Verified policy weights: fetch, check and swap what a trainer announces.

A trainer announces weights (``pld_msgs/PolicyWeights``) with a version, the file's sha256 and size,
and a URI. A robot must never run a file it did not verify: :func:`load_verified` checks size and
checksum, accepts safetensors only (a pickle can run code when loaded) and checks every tensor's
name, shape and dtype against the model it is meant for. :class:`WeightsSlot` hands the verified
weights to the control loop, which takes them between two ticks; a bad file is rejected and the
old weights stay in place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

T = TypeVar("T")

_HEADER_LENGTH = 8
"""A safetensors file starts with the little-endian u64 length of its JSON header."""
_MAX_HEADER = 100 * 1024 * 1024
"""Header size above which a file is not taken for safetensors (the format caps it at 100 MB)."""


class WeightsError(ValueError):
    """Weights that must not be used; the message says which file and why."""


@dataclass(frozen=True)
class VerifiedWeights:
    """A checked safetensors file: its tensors and string metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str


def _format_problem(data: bytes) -> str | None:
    # Name the common wrong formats, so that the error says what the file is rather than only
    # that it failed to parse.
    if data[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        return "a Python pickle (only safetensors is accepted: a pickle can run code when loaded)"
    if data[:4] == b"PK\x03\x04":
        return "a zip archive, e.g. torch.save (only safetensors is accepted)"
    if len(data) < _HEADER_LENGTH:
        return f"not safetensors: {len(data)} bytes is shorter than the header length"
    (length,) = struct.unpack("<Q", data[:_HEADER_LENGTH])
    if length > min(_MAX_HEADER, len(data) - _HEADER_LENGTH):
        return f"not safetensors (or truncated): header length {length} exceeds the file"
    if data[_HEADER_LENGTH : _HEADER_LENGTH + 1] != b"{":
        return "not safetensors: the header is not a JSON object"
    return None


def load_verified(
    path: Path,
    expected_sha256: str,
    expected_size: int,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> VerifiedWeights:
    """Read ``path`` and check it; raise :class:`WeightsError` saying why it is unusable.

    ``reference`` (a model's state dict) fixes the tensor names, shapes and dtypes the file must
    hold exactly; without it any safetensors file passes.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) != expected_size:
        raise WeightsError(f"{path}: {len(data)} bytes, announced {expected_size} (truncated or wrong file)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256.lower():
        raise WeightsError(f"{path}: sha256 {digest} does not match the announced {expected_sha256}")
    return _parse(data, str(path), digest, reference)


def load_local(path: Path, reference: Mapping[str, torch.Tensor] | None = None) -> VerifiedWeights:
    """Read a weights file the profile names (no announcement, so no checksum to compare).

    The same format and tensor checks as :func:`load_verified`; raise :class:`WeightsError`.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror}") from None
    return _parse(data, str(path), hashlib.sha256(data).hexdigest(), reference)


def _parse(
    data: bytes, source: str, digest: str, reference: Mapping[str, torch.Tensor] | None
) -> VerifiedWeights:
    problem = _format_problem(data)
    if problem is not None:
        raise WeightsError(f"{source}: {problem}")
    try:
        tensors = load_safetensors(data)
        (length,) = struct.unpack("<Q", data[:_HEADER_LENGTH])
        header = json.loads(data[_HEADER_LENGTH : _HEADER_LENGTH + length])
    except (SafetensorError, ValueError) as exc:
        raise WeightsError(f"{source}: not a valid safetensors file: {exc}") from None
    metadata = header.get("__metadata__") or {}
    if reference is not None:
        check_tensors(tensors, reference, source)
    return VerifiedWeights(tensors=tensors, metadata=dict(metadata), sha256=digest)


def check_tensors(
    tensors: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`WeightsError` unless ``tensors`` has exactly ``reference``'s names, shapes, dtypes."""
    missing = sorted(set(reference) - set(tensors))
    unexpected = sorted(set(tensors) - set(reference))
    if missing or unexpected:
        raise WeightsError(
            f"{source}: tensors do not match the model: missing {', '.join(missing[:5]) or 'none'}"
            f"{' ...' if len(missing) > 5 else ''}; unexpected {', '.join(unexpected[:5]) or 'none'}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in tensors.items():
        expected = reference[name]
        if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
            raise WeightsError(
                f"{source}: tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"the model has {tuple(expected.shape)} {expected.dtype}"
            )


def fetch(uri: str, directory: Path, timeout: float) -> Path:
    """The local file behind ``uri``: a file:// path itself, an http(s):// one downloaded to ``directory``.

    Raise :class:`WeightsError` for another scheme or a failed download.
    """
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme not in ("http", "https"):
        raise WeightsError(f"{uri}: unsupported URI scheme {parsed.scheme!r} (file://, http://, https://)")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with (
            urllib.request.urlopen(uri, timeout=timeout) as response,
            tempfile.NamedTemporaryFile(dir=directory, suffix=".safetensors", delete=False) as out,
        ):
            shutil.copyfileobj(response, out)
            return Path(out.name)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(f"{uri}: download failed: {exc}") from None


@dataclass(frozen=True)
class Versioned(Generic[T]):
    version: int
    value: T


class WeightsSlot(Generic[T]):
    """The weights in use and the newest verified ones waiting for the next tick.

    A loader thread :meth:`offer` s verified weights; the control loop calls :meth:`acquire` once
    at the start of each tick, which promotes the waiting weights. A tick therefore runs on one
    set of weights from start to end, and a swap is one reference assignment under a lock.
    """

    def __init__(self, initial: Versioned[T]) -> None:
        self._lock = threading.Lock()
        self._current = initial
        self._pending: Versioned[T] | None = None

    @property
    def newest_version(self) -> int:
        """The version of the waiting weights, else of the current ones."""
        with self._lock:
            return (self._pending or self._current).version

    def check_version(self, version: int) -> None:
        """Raise :class:`WeightsError` unless ``version`` is newer than every version seen."""
        newest = self.newest_version
        if version <= newest:
            raise WeightsError(f"version {version} is not newer than version {newest}")

    def offer(self, weights: Versioned[T]) -> None:
        """Queue ``weights`` for the next tick; raise :class:`WeightsError` if it is not newer."""
        with self._lock:
            newest = (self._pending or self._current).version
            if weights.version <= newest:
                raise WeightsError(f"version {weights.version} is not newer than version {newest}")
            self._pending = weights

    def acquire(self) -> Versioned[T]:
        """The weights for this tick (the waiting ones, if any, become current)."""
        with self._lock:
            if self._pending is not None:
                self._current, self._pending = self._pending, None
            return self._current
