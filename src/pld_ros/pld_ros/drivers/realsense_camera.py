"""A RealSense colour stream through pyrealsense2, live or played back from a recording.

A recording (``.db3``; ``.bag`` from older SDKs) goes through the same pipeline as a device: only
the pipeline's config differs, so a test that plays a file exercises the capture code of the robot.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np

# pyrealsense2 (since 2.56) carries a Fast DDS of its own, whose process-wide singletons (GNU unique
# symbols) bind to whichever copy is loaded first: loaded before ROS 2's, it makes a process that
# also runs an rclpy node segfault when it exits. So ROS 2's is loaded first, where there is one.
with contextlib.suppress(ImportError):
    import rclpy  # noqa: F401
import pyrealsense2 as rs

from pld_ros.drivers.camera import UNCALIBRATED, CameraFault, CameraSource, Frame, Intrinsics, Playback
from pld_ros.profile import Camera

_POLL = 0.05
"""s: how often a waiting read checks that the device is still there."""

# Timestamps in these domains are already on the host's wall clock (global time is the device
# clock mapped onto it by librealsense).
_HOST_DOMAINS = (rs.timestamp_domain.global_time, rs.timestamp_domain.system_time)


def set_fixed_exposure(sensor: Any, exposure_us: int) -> float:
    """Turn auto-exposure off and fix the exposure of ``sensor``; return the value set, in its units.

    Raise :class:`CameraFault` when the sensor cannot take that exposure.
    """
    name = sensor.get_info(rs.camera_info.name)
    if not sensor.supports(rs.option.exposure):
        raise CameraFault(f"the {name} sensor has no manual exposure", device_lost=False)
    # The RGB sensor of a D4xx counts in UVC units of 100 us; the stereo module (which also
    # delivers the colour stream of a D405) in us.
    value = float(round(exposure_us / 100)) if name == "RGB Camera" else float(exposure_us)
    limits = sensor.get_option_range(rs.option.exposure)
    if not limits.min <= value <= limits.max:
        raise CameraFault(
            f"exposure_us {exposure_us} is {value:g} in the {name} sensor's units, outside its range "
            f"[{limits.min:g}, {limits.max:g}]",
            device_lost=False,
        )
    if sensor.supports(rs.option.enable_auto_exposure):
        sensor.set_option(rs.option.enable_auto_exposure, 0)
    sensor.set_option(rs.option.exposure, value)
    return value


def connected_serials() -> list[str]:
    """Serial numbers of the RealSense devices plugged in now."""
    return [device.get_info(rs.camera_info.serial_number) for device in rs.context().query_devices()]


class RealSenseCamera(CameraSource):
    """The colour stream of the RealSense a profile's camera names (by serial), or of a recording.

    Frames are rgb8 at the profile's width, height and fps. Timestamps are the device's, mapped
    to the host clock (global time). A recording is re-timed so that its first frame is "now" and
    the recorded spacing is kept, across loops too: in real time it replays as the camera streamed
    (without real time the stamps run ahead of the clock).
    """

    def __init__(self, camera: Camera, playback: Playback | None = None) -> None:
        if camera.driver != "realsense":
            raise ValueError(f"not a realsense camera: driver {camera.driver!r}")
        self._camera = camera
        self._playback = playback
        self._pipeline: Any = None
        self._device: Any = None
        self._intrinsics = UNCALIBRATED
        self._last_number: int | None = None
        self._last_device_time: float | None = None
        self._last_timestamp = 0.0
        self._retime_offset = 0.0

    @property
    def description(self) -> str:
        if self._playback is not None:
            return f"RealSense recording {self._playback.path}"
        return f"RealSense {self._camera.serial}"

    @property
    def intrinsics(self) -> Intrinsics:
        return self._intrinsics

    def open(self) -> None:
        self.close()
        camera = self._camera
        config = rs.config()
        if self._playback is not None:
            if not self._playback.path.is_file():
                raise CameraFault(f"{self.description}: no such file", device_lost=True)
            config.enable_device_from_file(str(self._playback.path), repeat_playback=self._playback.loop)
        else:
            # Starting a pipeline for an absent device blocks for 15 s before failing.
            if camera.serial not in connected_serials():
                raise CameraFault(
                    f"{self.description} is not connected (connected: {connected_serials() or 'none'})",
                    device_lost=True,
                )
            config.enable_device(camera.serial)
        config.enable_stream(rs.stream.color, camera.width, camera.height, rs.format.rgb8, camera.fps)
        pipeline = rs.pipeline()
        try:
            started = pipeline.start(config)
        except RuntimeError as exc:
            raise CameraFault(
                f"{self.description}: cannot stream {camera.width}x{camera.height} rgb8 at "
                f"{camera.fps} fps: {exc}",
                device_lost=True,
            ) from exc
        try:
            device = started.get_device()
            if self._playback is not None:
                device.as_playback().set_real_time(self._playback.real_time)
            else:
                self._configure(device)
            stream = started.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        except (RuntimeError, CameraFault) as exc:
            pipeline.stop()
            raise CameraFault(f"{self.description}: {exc}", device_lost=True) from exc
        self._intrinsics = Intrinsics(stream.fx, stream.fy, stream.ppx, stream.ppy)
        self._pipeline, self._device = pipeline, device
        self._last_number = self._last_device_time = None

    def _configure(self, device: Any) -> None:
        sensor = next(
            (
                s
                for s in device.query_sensors()
                if any(p.stream_type() == rs.stream.color for p in s.get_stream_profiles())
            ),
            None,
        )
        if sensor is None:
            raise CameraFault("no sensor of the device streams colour", device_lost=True)
        if sensor.supports(rs.option.global_time_enabled):
            sensor.set_option(rs.option.global_time_enabled, 1)
        if self._camera.exposure_us is not None:
            set_fixed_exposure(sensor, self._camera.exposure_us)

    def read(self, timeout: float) -> Frame:
        if self._pipeline is None:
            raise CameraFault(f"{self.description} is not open", device_lost=True)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.0:
                raise CameraFault(f"{self.description}: no new frame for {timeout:.2f} s", device_lost=False)
            try:
                arrived, frames = self._pipeline.try_wait_for_frames(
                    max(1, int(min(remaining, _POLL) * 1000))
                )
            except RuntimeError as exc:
                raise CameraFault(f"{self.description}: {exc}", device_lost=True) from exc
            if not arrived:
                self._check_present()
                continue
            color = frames.get_color_frame()
            number = int(color.get_frame_number()) if color else None
            # A repeated frame number is a frame already delivered, not a new image.
            if number is None or number == self._last_number:
                continue
            return self._frame(color, number)

    def _frame(self, color: Any, number: int) -> Frame:
        device_time = color.get_timestamp() / 1000.0
        if self._playback is not None:
            if self._last_device_time is None:
                self._retime_offset = time.time() - device_time
            elif device_time <= self._last_device_time:
                # The recording looped: go on one frame period after the last frame given.
                self._retime_offset = self._last_timestamp + 1.0 / self._camera.fps - device_time
            timestamp = device_time + self._retime_offset
        elif color.get_frame_timestamp_domain() in _HOST_DOMAINS:
            timestamp = device_time
        elif color.supports_frame_metadata(rs.frame_metadata_value.time_of_arrival):
            timestamp = color.get_frame_metadata(rs.frame_metadata_value.time_of_arrival) / 1000.0
        else:
            timestamp = time.time()
        self._last_number, self._last_device_time, self._last_timestamp = number, device_time, timestamp
        # Copy: the array views a buffer librealsense recycles once the frame is released.
        rgb = np.array(np.asanyarray(color.get_data()), dtype=np.uint8)
        return Frame(rgb=rgb, timestamp=timestamp, number=number)

    def _check_present(self) -> None:
        if self._playback is not None:
            # A looping playback reports "stopped" for a moment when it starts over: never the end.
            if self._playback.loop:
                return
            if self._device.as_playback().current_status() == rs.playback_status.stopped:
                raise CameraFault(f"{self.description}: the recording ended", device_lost=True)
        elif not self._device.is_connected():
            raise CameraFault(f"{self.description} was disconnected", device_lost=True)

    def close(self) -> None:
        pipeline, device = self._pipeline, self._device
        self._pipeline = self._device = None
        if pipeline is None:
            return
        # A device that went away may have stopped already: nothing is left to release then.
        with contextlib.suppress(RuntimeError):
            if self._playback is not None:
                # Stopping a playback while its reader thread is mid-file sometimes aborts the
                # process (librealsense 2.59: "terminate called without an active exception").
                device.as_playback().pause()
            pipeline.stop()
