"""Stream one camera of a profile: capture in a thread, publish the image, policy view and info.

Parameters: ``profile`` (path of the profile), ``camera`` (its key under ``cameras``),
``playback_file`` (a recording to play instead of the device; empty: the live device),
``playback_loop`` (start the recording over at its end), ``reconnect_period`` (s between two
attempts to open a camera that is gone), ``realtime_priority`` (SCHED_FIFO priority of the capture
thread, 0 = none: keeps the frame-to-policy latency low while simulations or training load the
CPU; see docs/benchmarks.md).

The node never gives up on its camera: a device that disappears (unplugged, recording ended) is
reported stale on /diagnostics at once and opened again every ``reconnect_period``. Simulated
cameras are published by the simulated world, not by this node.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from rclpy.time import Time

from pld_ros.core.rate import TickTiming
from pld_ros.drivers.camera import CameraFault, CameraSource, Frame, Playback
from pld_ros.drivers.opencv_camera import OpenCvCamera
from pld_ros.drivers.realsense_camera import RealSenseCamera
from pld_ros.nodes.camera_publisher import CameraPublisher
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.runner import NodeConfigError, load_node_profile, run_node
from pld_ros.profile import Camera

DIAGNOSTICS_PERIOD = 1.0
"""s between two periodic diagnostics; a camera that faults or recovers is reported at once."""


def camera_source(camera: Camera, playback: Playback | None) -> CameraSource:
    """The driver of a profile's camera; simulated cameras have none."""
    if camera.driver == "realsense":
        return RealSenseCamera(camera, playback)
    if camera.driver == "opencv":
        return OpenCvCamera(camera, playback)
    raise ValueError(f"no driver for {camera.driver!r} cameras")


class CameraNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("camera", **kwargs)
        profile = load_node_profile(self)
        self._name = str(self.declare_parameter("camera", "").value)
        playback_file = str(self.declare_parameter("playback_file", "").value)
        playback_loop = bool(self.declare_parameter("playback_loop", False).value)
        self._reconnect_period = float(self.declare_parameter("reconnect_period", 1.0).value)
        self._realtime_priority = int(self.declare_parameter("realtime_priority", 0).value)
        if not self._reconnect_period > 0.0:
            raise NodeConfigError(
                f"parameter 'reconnect_period' must be positive, got {self._reconnect_period}"
            )
        if not self._name:
            raise NodeConfigError("parameter 'camera' (a camera name of the profile) is required")
        camera = profile.cameras.get(self._name)
        if camera is None:
            raise NodeConfigError(
                f"profile {profile.name!r} has no camera {self._name!r} (cameras: {sorted(profile.cameras)})"
            )
        if camera.driver == "sim":
            raise NodeConfigError(
                f"camera {self._name!r} is simulated: the simulated world publishes it, not a camera node"
            )
        self._camera = camera
        playback = Playback(Path(playback_file), loop=playback_loop) if playback_file else None
        self._source = camera_source(camera, playback)
        self._publisher: CameraPublisher | None = None

        # Written by the capture thread, read by the timers.
        self._lock = threading.Lock()
        self._frames = 0
        self._frames_reported = 0
        self._reported_at = time.monotonic()
        self._last_frame: Frame | None = None
        self._dropped = 0
        self._reconnects = 0
        self._fault = ""
        """Why the camera delivers nothing now; empty while it streams."""

        # Each frame's view and publishing must be done before the next frame arrives.
        self._timing = TickTiming(1.0 / camera.fps)
        self._diagnostics = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, f"cameras/{self._name}")
        start_heartbeat(self)
        self.create_timer(DIAGNOSTICS_PERIOD, self._report)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name=f"camera-{self._name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------------------------- capture

    def _capture(self) -> None:
        if self._realtime_priority > 0:
            try:
                # pid 0 is the calling thread: only capture, view and publish run real-time.
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._realtime_priority))
            except (OSError, ValueError) as exc:
                self.get_logger().warning(f"capture thread stays non-real-time: {exc}")
        lost_since: float | None = None
        while not self._stop.is_set() and self.context.ok():
            try:
                self._source.open()
                if lost_since is not None:
                    self.get_logger().info(
                        f"{self._source.description} is back after {time.monotonic() - lost_since:.1f} s"
                    )
                    with self._lock:
                        self._reconnects += 1
                lost_since = None
                self._stream()
            except CameraFault as fault:
                if lost_since is None:
                    lost_since = time.monotonic()
                    self.get_logger().error(f"{fault}; opening it again every {self._reconnect_period:g} s")
                self._set_fault(str(fault))
            except Exception as exc:
                if not self.context.ok():
                    return  # rclpy was shut down under the thread (SIGINT): publishing fails
                # Drivers wrap what they expect; anything else must not end the capture for good.
                if lost_since is None:
                    lost_since = time.monotonic()
                self.get_logger().error(f"{self._source.description}: unexpected {type(exc).__name__}: {exc}")
                self._set_fault(f"{type(exc).__name__}: {exc}")
            finally:
                self._source.close()
            self._stop.wait(self._reconnect_period)

    def _stream(self) -> None:
        if self._publisher is None:
            self._publisher = CameraPublisher(self, self._name, self._camera, self._source.intrinsics)
        previous: int | None = None
        while not self._stop.is_set():
            try:
                frame = self._source.read(timeout=self._camera.stale_after)
            except CameraFault as fault:
                if fault.device_lost:
                    raise
                self._set_fault(str(fault))
                continue
            started = time.monotonic()
            self._publisher.publish(frame.rgb, Time(nanoseconds=round(frame.timestamp * 1e9)).to_msg())
            with self._lock:
                self._timing.record(started, time.monotonic() - started)
                self._frames += 1
                self._last_frame = frame
                if previous is not None and frame.number > previous + 1:
                    self._dropped += frame.number - previous - 1
                recovered, self._fault = bool(self._fault), ""
            previous = frame.number
            if recovered:
                self._report()

    def _set_fault(self, reason: str) -> None:
        with self._lock:
            changed, self._fault = reason != self._fault, reason
        if changed:
            self._report()

    # ---------------------------------------------------------------------------------- report

    def _report(self) -> None:
        if not self.context.ok():
            return  # shutting down: the publisher is gone
        now = time.monotonic()
        with self._lock:
            frame, fault = self._last_frame, self._fault
            fps = (self._frames - self._frames_reported) / max(now - self._reported_at, 1e-3)
            self._frames_reported, self._reported_at = self._frames, now
            counters = {
                "frames": self._frames,
                "dropped_frames": self._dropped,
                "reconnects": self._reconnects,
            }
            timing = self._timing.stats()
        age = time.time() - frame.timestamp if frame is not None else None
        stale = age is None or age > self._camera.stale_after or bool(fault)
        if not stale:
            message = f"streaming at {fps:.1f} fps"
        elif fault:
            message = f"stale: {fault}"
        else:
            message = "stale: no frame yet" if age is None else f"stale: no frame for {age:.2f} s"
        values = {
            "fps": f"{fps:.2f}",
            "frame_age": f"{age:.4f}" if age is not None else "never",
            "stale": str(stale).lower(),
            **counters,
            **timing.values(),
        }
        publish_status(
            self,
            self._diagnostics,
            level=DiagnosticStatus.ERROR if stale else DiagnosticStatus.OK,
            name=f"pld/camera/{self._name}",
            hardware_id=self._source.description,
            message=message,
            values=values,
        )
        self._metrics.publish(
            {
                "fps": fps,
                "frame_age_ms": age * 1e3 if age is not None else math.nan,
                "dropped_frames": counters["dropped_frames"],
                "publish_latency_p99_ms": timing.latency_p99 * 1e3,
            }
        )

    def destroy_node(self) -> None:
        self._stop.set()
        # A read returns within stale_after; a blocked OpenCV device is left to the daemon thread.
        self._thread.join(timeout=self._camera.stale_after + 2.0)
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(CameraNode))


if __name__ == "__main__":
    main()
