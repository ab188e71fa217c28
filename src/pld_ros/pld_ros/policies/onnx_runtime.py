"""One way to open an ONNX model for the control loop, shared by every node that runs one.

On a robot computer every node runs next to a 1 kHz arm controller and a simulator or camera
drivers. onnxruntime's defaults fit a server instead: one thread per core, and threads that keep
spinning after each run waiting for the next one. At 20 Hz that spinning is almost all of the
CPU they use (one base policy node took 67 % of a core for 3 ms of inference per tick), so
sessions here run on few threads that sleep between runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

_PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(available: Sequence[str]) -> list[str]:
    """CUDA first when it is available, and always the CPU (onnxruntime's fallback)."""
    chosen = [p for p in _PREFERRED_PROVIDERS if p in available]
    return chosen or ["CPUExecutionProvider"]


def inference_session(
    model: str | bytes, *, threads: int = 1, providers: Sequence[str] | None = None
) -> ort.InferenceSession:
    """A session for ``model`` (a path or the serialized model) with ``threads`` intra-op threads
    that do not spin between runs; on CUDA when available unless ``providers`` says otherwise."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    chosen = list(providers) if providers is not None else choose_providers(ort.get_available_providers())
    return ort.InferenceSession(model, options, providers=chosen)
