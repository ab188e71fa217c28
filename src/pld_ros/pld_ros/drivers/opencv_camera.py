"""A camera through OpenCV: a USB device (V4L2) by index, a video file, or a stream URL.

OpenCV reports no capture time that maps onto the host clock on every backend, so a frame is
stamped with the host's wall clock right after it was grabbed, before it is decoded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pld_ros.drivers.camera import UNCALIBRATED, CameraFault, CameraSource, Frame, Intrinsics, Playback
from pld_ros.profile import Camera


class OpenCvCamera(CameraSource):
    """The camera a profile's ``source`` names, or the video file of ``playback`` instead.

    A video file plays at the profile's fps (as fast as it decodes without ``real_time``); its end
    is a lost device unless it loops, like a RealSense recording. A device or a stream blocks in
    read() for as long as the backend waits (V4L2: up to 10 s), whatever the timeout.
    """

    def __init__(self, camera: Camera, playback: Playback | None = None) -> None:
        if camera.driver != "opencv" or camera.source is None:
            raise ValueError(f"not an opencv camera: driver {camera.driver!r}, source {camera.source!r}")
        self._camera = camera
        self._source = str(playback.path) if playback is not None else camera.source
        self._loop = playback is not None and playback.loop
        self._real_time = playback is None or playback.real_time
        self._is_file = Path(self._source).is_file()
        self._capture: Any = None
        self._number = 0
        self._due = 0.0

    @property
    def description(self) -> str:
        kind = "video file" if self._is_file else "device" if self._source.isdigit() else "stream"
        return f"OpenCV {kind} {self._source}"

    @property
    def intrinsics(self) -> Intrinsics:
        return UNCALIBRATED

    def open(self) -> None:
        self.close()
        camera = self._camera
        if self._source.isdigit():
            capture = cv2.VideoCapture(int(self._source))
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, camera.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, camera.height)
            capture.set(cv2.CAP_PROP_FPS, camera.fps)
        else:
            capture = cv2.VideoCapture(self._source)
        if not capture.isOpened():
            capture.release()
            raise CameraFault(f"{self.description} cannot be opened", device_lost=True)
        self._capture = capture
        self._number = 0
        self._due = time.monotonic()

    def read(self, timeout: float) -> Frame:
        capture = self._capture
        if capture is None:
            raise CameraFault(f"{self.description} is not open", device_lost=True)
        if self._is_file and self._real_time:
            wait = self._due - time.monotonic()
            if wait > timeout:
                time.sleep(timeout)
                raise CameraFault(f"{self.description}: no new frame for {timeout:.2f} s", device_lost=False)
            time.sleep(max(0.0, wait))
            # Due times advance from the schedule, not from now, so decoding time does not slow it.
            self._due = max(self._due, time.monotonic() - 1.0 / self._camera.fps) + 1.0 / self._camera.fps
        grabbed = capture.grab()
        if not grabbed and self._loop and self._is_file:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            grabbed = capture.grab()
        if not grabbed:
            ended = "the video file ended" if self._is_file else "stopped delivering frames"
            raise CameraFault(f"{self.description}: {ended}", device_lost=True)
        timestamp = time.time()
        retrieved, bgr = capture.retrieve()
        if not retrieved:
            raise CameraFault(f"{self.description}: a grabbed frame could not be decoded", device_lost=True)
        if bgr.shape[:2] != (self._camera.height, self._camera.width):
            raise CameraFault(
                f"{self.description} delivers {bgr.shape[1]}x{bgr.shape[0]} frames, the profile says "
                f"{self._camera.width}x{self._camera.height}",
                device_lost=True,
            )
        frame = Frame(
            rgb=np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8),
            timestamp=timestamp,
            number=self._number,
        )
        self._number += 1
        return frame

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
