"""The camera node on recordings: what it publishes over DDS, and how it reports a camera that goes."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.camera import CameraNode
from pld_ros.nodes.runner import NodeConfigError
from tests.processes import Watched
from tests.recordings import FX, FY, SERIAL, record_realsense, write_video

pytestmark = pytest.mark.ros

WIDTH, HEIGHT, FPS = 64, 48, 30
BAND = (8, 56)
"""Columns of the crop: inside it green is 200, outside 0."""
VIEW = 16
PROFILE = f"""
name: camera_test
robot_id: test_rig
cameras:
  wrist:
    driver: realsense
    serial: "{SERIAL}"
    width: {WIDTH}
    height: {HEIGHT}
    fps: {FPS}
    stale_after: 0.3
    policy_view: {{width: {VIEW}, height: {VIEW}, crop: [{BAND[0]}, 0, {BAND[1] - BAND[0]}, {HEIGHT}]}}
  side:
    driver: opencv
    source: "0"
    width: {WIDTH}
    height: {HEIGHT}
    fps: {FPS}
    policy_view: {{width: {VIEW}, height: {VIEW}, crop: [{BAND[0]}, 0, {BAND[1] - BAND[0]}, {HEIGHT}]}}
"""
SIM_PROFILE = """
name: camera_test_sim
robot_id: test_rig
cameras:
  wrist: {driver: sim}
simulation: {world: franka_pick_cube}
"""
# Topics of a namespace of this test run's own: another test session (e.g. a simulated world that
# publishes cameras/wrist/...) may have drawn the same DDS domain.
NAMESPACE = f"/camera_test_{os.getpid()}"
# Best effort like the publishers, but deep enough to keep what arrives between two spins.
IMAGES = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("camera_node")
    paths = {
        "profile": directory / "camera_test.yaml",
        "sim_profile": directory / "camera_test_sim.yaml",
        "recording": directory / "wrist.db3",
        "video": directory / "side.avi",
    }
    paths["profile"].write_text(PROFILE)
    paths["sim_profile"].write_text(SIM_PROFILE)
    record_realsense(paths["recording"], 20, WIDTH, HEIGHT, FPS, BAND)
    write_video(paths["video"], 20, WIDTH, HEIGHT, FPS, BAND)
    return paths


@pytest.fixture
def context() -> Iterator[Context]:
    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


class Received:
    """Everything one camera's topics, the diagnostics and the heartbeats deliver."""

    def __init__(self, node: Node, camera: str, source: Path) -> None:
        """Diagnostics count when they come from ``source``: another graph may share the domain."""
        self.views: list[Image] = []
        self.raw: list[Image] = []
        self.info: list[CameraInfo] = []
        self.heartbeats: list[str] = []
        self.diagnostics: list[dict[str, Any]] = []
        prefix = f"cameras/{camera}"
        node.create_subscription(Image, f"{prefix}/policy_view", self.views.append, IMAGES)
        node.create_subscription(Image, f"{prefix}/image_raw", self.raw.append, IMAGES)
        node.create_subscription(CameraInfo, f"{prefix}/camera_info", self.info.append, IMAGES)
        node.create_subscription(Header, HEARTBEAT_TOPIC, lambda m: self.heartbeats.append(m.frame_id), 50)
        node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics(camera, str(source)), 50
        )

    def _on_diagnostics(self, camera: str, source: str) -> Callable[[DiagnosticArray], None]:
        def keep(array: DiagnosticArray) -> None:
            for status in array.status:
                if status.name == f"pld/camera/{camera}" and source in status.hardware_id:
                    values = {kv.key: kv.value for kv in status.values}
                    self.diagnostics.append({"level": status.level, "message": status.message, **values})

        return keep

    def went_stale_and_recovered(self) -> bool:
        """A streaming report, then a stale one, then streaming again after a reconnect."""
        phase = 0
        for report in self.diagnostics:
            stale = report["stale"] == "true"
            if (phase == 0 and not stale) or (phase == 1 and stale):
                phase += 1
            elif phase == 2 and not stale and int(report["reconnects"]) >= 1:
                return True
        return False


def spin_until(nodes: list[Node], done: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    executor = SingleThreadedExecutor(context=nodes[0].context)
    for node in nodes:
        executor.add_node(node)
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown()
    assert done(), why()


def check_view(view: Image) -> None:
    assert (view.width, view.height, view.encoding, view.step) == (VIEW, VIEW, "rgb8", VIEW * 3)
    pixels = np.frombuffer(bytes(view.data), dtype=np.uint8).reshape(VIEW, VIEW, 3)
    # Green is 200 only inside the band: any column from outside the crop would lower it.
    assert (pixels[..., 1] == 200).all(), pixels[..., 1]
    assert (pixels[..., 0] % 8 == 0).all() and len(np.unique(pixels[..., 0])) == 1, "one frame, unmixed"


def stamp(message: Image | CameraInfo) -> float:
    return float(message.header.stamp.sec + message.header.stamp.nanosec * 1e-9)


def test_the_node_streams_a_recording_and_reports_it_stale_then_back_when_it_replays(
    files: dict[str, Path], context: Context
) -> None:
    run = Watched(
        [
            sys.executable,
            "-m",
            "pld_ros.nodes.camera",
            "--ros-args",
            "-r",
            "__node:=wrist_camera",
            "-r",
            f"__ns:={NAMESPACE}",
            "-p",
            f"profile:={files['profile']}",
            "-p",
            "camera:=wrist",
            "-p",
            f"playback_file:={files['recording']}",
            "-p",
            "reconnect_period:=0.5",
        ]
    )
    listener = Node("camera_listener", namespace=NAMESPACE, context=context)
    received = Received(listener, "wrist", files["recording"])
    try:
        spin_until(
            [listener],
            lambda: (
                len(received.views) >= 10
                and bool(received.raw)
                and bool(received.info)
                and f"{NAMESPACE}/wrist_camera" in received.heartbeats
                and received.went_stale_and_recovered()
            ),
            timeout=40.0,
            why=lambda: (
                f"views {len(received.views)}, raw {len(received.raw)}, info {len(received.info)}, "
                f"heartbeats {set(received.heartbeats)}, diagnostics {received.diagnostics}\n{run.output}"
            ),
        )
        run.process.send_signal(signal.SIGINT)
        code = run.wait_exit(timeout=15)
    finally:
        run.kill()
        listener.destroy_node()
    assert code == 0, run.output
    assert "Traceback" not in run.output, run.output

    for view in received.views:
        check_view(view)
        assert view.header.frame_id == "wrist_camera_optical_frame"
    stamps = [stamp(view) for view in received.views]
    assert all(abs(s - time.time()) < 30.0 for s in stamps), "capture times on the host clock"
    raw = received.raw[0]
    assert (raw.width, raw.height, raw.encoding, raw.step) == (WIDTH, HEIGHT, "rgb8", WIDTH * 3)
    pixels = np.frombuffer(bytes(raw.data), dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)
    assert (pixels[:, : BAND[0], 1] == 0).all() and (pixels[:, BAND[0] : BAND[1], 1] == 200).all()
    info = received.info[0]
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert list(info.k) == pytest.approx([FX, 0.0, WIDTH / 2, 0.0, FY, HEIGHT / 2, 0.0, 0.0, 1.0])
    streaming = next(d for d in received.diagnostics if d["stale"] == "false")
    assert streaming["level"] == DiagnosticStatus.OK and float(streaming["frame_age"]) < 0.3
    stale = next(d for d in received.diagnostics if d["stale"] == "true")
    assert stale["level"] == DiagnosticStatus.ERROR and "stale" in stale["message"]
    assert "recording ended" in run.output


def make_node(context: Context, files: dict[str, Path], **parameters: Any) -> CameraNode:
    overrides = [Parameter(name, value=value) for name, value in parameters.items()]
    return CameraNode(context=context, namespace=NAMESPACE, parameter_overrides=overrides)


def test_the_node_streams_an_opencv_video_in_process_from_a_real_time_thread(
    files: dict[str, Path], context: Context
) -> None:
    camera = make_node(
        context,
        files,
        profile=str(files["profile"]),
        camera="side",
        playback_file=str(files["video"]),
        playback_loop=True,
        realtime_priority=1,
    )
    listener = Node("camera_listener", namespace=NAMESPACE, context=context)
    received = Received(listener, "side", files["video"])
    try:
        spin_until(
            [camera, listener],
            lambda: len(received.views) >= 30 and bool(received.info) and bool(received.diagnostics),
            timeout=20.0,
            why=lambda: f"views {len(received.views)}, diagnostics {received.diagnostics}",
        )
        # Only the capture thread runs real-time (where the process may: root or an rtprio limit).
        thread = camera._thread.native_id
        assert thread is not None
        capture = os.sched_getscheduler(thread)
        assert capture == (os.SCHED_FIFO if os.geteuid() == 0 else os.SCHED_OTHER)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        listener.destroy_node()
        stopping = time.monotonic()
        camera.destroy_node()
    assert time.monotonic() - stopping < 3.0, "the capture thread stops with the node"
    for view in received.views:
        check_view(view)
    # The video loops: frame 19 (red 152) is followed by frame 0 again, and stamps keep increasing.
    reds = [int(view.data[0]) for view in received.views]
    assert 0 in reds[1:] and max(reds) == 8 * 19
    stamps = [stamp(view) for view in received.views]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert received.info[0].k[0] == received.info[0].k[4] == 0.0, "OpenCV knows no intrinsics: uncalibrated"
    assert received.diagnostics[-1]["stale"] == "false"
    assert 10.0 < float(received.diagnostics[-1]["fps"]) < 60.0


@pytest.mark.parametrize(
    ("which", "camera", "message"),
    [
        ("sim_profile", "wrist", "camera 'wrist' is simulated: the simulated world publishes it"),
        ("profile", "top", r"profile 'camera_test' has no camera 'top' \(cameras: \['side', 'wrist'\]\)"),
        ("missing", "wrist", "no such profile file"),
    ],
)
def test_a_camera_the_node_cannot_serve_is_a_configuration_error(
    files: dict[str, Path], context: Context, which: str, camera: str, message: str
) -> None:
    profile = files.get(which, files["profile"].with_name("missing.yaml"))
    with pytest.raises(NodeConfigError, match=message):
        make_node(context, files, profile=str(profile), camera=camera)
