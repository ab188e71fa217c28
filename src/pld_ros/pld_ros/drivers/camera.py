"""The interface every camera source implements (RealSense, OpenCV), and the frame it delivers.

A source is opened, read frame by frame, and closed; a recording plays through the same source
as the live device, so the code that handles a camera is the code a test exercises.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray


class CameraFault(RuntimeError):
    """No frame can be delivered right now.

    ``device_lost`` tells a camera that is gone (unplugged, recording ended, cannot be opened:
    close it and open it again) from one that is only late (no new frame within the timeout:
    keep reading).
    """

    def __init__(self, message: str, *, device_lost: bool) -> None:
        super().__init__(message)
        self.device_lost = device_lost


@dataclass(frozen=True, eq=False)
class Frame:
    """One colour image as the camera delivered it. The pixels are read-only: frames are shared."""

    rgb: NDArray[np.uint8]
    """H x W x 3, rgb8."""
    timestamp: float
    """Capture time, s since the epoch on the host's wall clock (``time.time()``)."""
    number: int
    """Frame counter of the device; gaps mean frames the device or driver dropped."""

    def __post_init__(self) -> None:
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"a frame is H x W x 3 uint8, got {self.rgb.shape} {self.rgb.dtype}")
        self.rgb.flags.writeable = False


@dataclass(frozen=True)
class Playback:
    """Play a recording through a source instead of its live device."""

    path: Path
    loop: bool = False
    """Start over at the end; otherwise the end of the file is a lost device."""
    real_time: bool = True
    """Deliver frames at the recorded pace; False delivers them as fast as they are read."""


_Source = TypeVar("_Source", bound="CameraSource")


class Intrinsics(NamedTuple):
    """Pinhole intrinsics of the full-resolution image, pixels; all zero when uncalibrated."""

    fx: float
    fy: float
    cx: float
    cy: float


UNCALIBRATED = Intrinsics(0.0, 0.0, 0.0, 0.0)
"""What a source without calibration reports (sensor_msgs/CameraInfo: K = 0 means uncalibrated)."""


class CameraSource(Protocol):
    """A camera, live or recorded. Use it as a context manager, or call open() and close().

    Implementations subclass this protocol explicitly to inherit the context-manager methods.
    """

    @property
    def description(self) -> str:
        """What the source is, for logs and diagnostics (serial number, device, file)."""
        ...

    @property
    def intrinsics(self) -> Intrinsics:
        """Intrinsics of the open stream (:data:`UNCALIBRATED` when the device has none)."""
        ...

    def open(self) -> None:
        """Start streaming; raise :class:`CameraFault` (``device_lost``) if it cannot."""
        ...

    def read(self, timeout: float) -> Frame:
        """The next new frame, waiting at most ``timeout`` seconds.

        Raise :class:`CameraFault`: ``device_lost`` when the camera is gone, otherwise when no new
        frame arrived in time.
        """
        ...

    def close(self) -> None:
        """Stop streaming; safe to call twice, after a fault and before open()."""
        ...

    def __enter__(self: _Source) -> _Source:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
