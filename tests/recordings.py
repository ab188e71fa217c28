"""Small camera recordings made on the spot: a RealSense file and a video file of known frames.

Frame ``i`` is :func:`pattern` (i): its red channel counts frames, so a test can tell which frame it
got, and its green channel marks a vertical band, so a test can tell where a crop was taken.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pyrealsense2 as rs
from numpy.typing import NDArray

SERIAL = "012345678901"
FX, FY = 50.0, 52.0


def pattern(index: int, width: int, height: int, band: tuple[int, int]) -> NDArray[np.uint8]:
    """Red = 8 * index (mod 256), green = 200 inside the columns [band[0], band[1]) and 0 outside."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = (8 * index) % 256
    image[:, band[0] : band[1], 1] = 200
    image[..., 2] = 50
    return image


def record_realsense(
    path: Path, frames: int, width: int, height: int, fps: int, band: tuple[int, int]
) -> None:
    """Record ``frames`` pattern frames of a synthetic RealSense colour stream, in real time.

    The recorder keeps the time each frame arrived and real-time playback reproduces it, so the
    frames are fed at ``fps``. Their timestamps are on the host clock (system time domain).
    """
    device = rs.software_device()
    device.register_info(rs.camera_info.serial_number, SERIAL)
    sensor = device.add_sensor("RGB Camera")
    intrinsics = rs.intrinsics()
    intrinsics.width, intrinsics.height = width, height
    intrinsics.fx, intrinsics.fy, intrinsics.ppx, intrinsics.ppy = FX, FY, width / 2, height / 2
    intrinsics.model, intrinsics.coeffs = rs.distortion.none, [0.0] * 5
    stream = rs.video_stream()
    stream.type, stream.index, stream.uid = rs.stream.color, 0, 0
    stream.width, stream.height, stream.fps, stream.bpp = width, height, fps, 3
    stream.fmt, stream.intrinsics = rs.format.rgb8, intrinsics
    profile = sensor.add_video_stream(stream)
    recorder = rs.recorder(str(path), device)
    sensor.open(profile)
    sensor.start(rs.frame_queue(frames))
    start = time.time()
    for i in range(frames):
        time.sleep(max(0.0, start + i / fps - time.time()))
        pixels = pattern(i, width, height, band)
        frame = rs.software_video_frame()
        frame.pixels, frame.bpp, frame.stride = pixels, 3, width * 3
        frame.timestamp = (start + i / fps) * 1000.0
        frame.domain = rs.timestamp_domain.system_time
        frame.frame_number = i
        frame.profile = profile.as_video_stream_profile()
        sensor.on_video_frame(frame)
    sensor.stop()
    sensor.close()
    del recorder  # the file is complete once the recorder is gone


def write_video(path: Path, frames: int, width: int, height: int, fps: int, band: tuple[int, int]) -> None:
    """Write pattern frames to a lossless (FFV1) video file, so pixel values survive exactly."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"FFV1"), float(fps), (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    for i in range(frames):
        writer.write(cv2.cvtColor(pattern(i, width, height, band), cv2.COLOR_RGB2BGR))
    writer.release()
