"""The RealSense source on recordings played through pyrealsense2's own pipeline (no device here)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pyrealsense2 as rs
import pytest

from pld_ros.drivers.camera import CameraFault, Frame, Playback
from pld_ros.drivers.realsense_camera import RealSenseCamera, set_fixed_exposure
from pld_ros.profile import Camera
from tests.recordings import FX, FY, record_realsense

WIDTH, HEIGHT, FPS, FRAMES = 64, 48, 30, 20
BAND = (8, 56)
CAMERA = Camera(driver="realsense", serial="000000000000", width=WIDTH, height=HEIGHT, fps=FPS)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("realsense") / "color.db3"
    record_realsense(path, FRAMES, WIDTH, HEIGHT, FPS, BAND)
    return path


def read_until_lost(camera: RealSenseCamera, limit: int = 100) -> tuple[list[Frame], CameraFault]:
    frames: list[Frame] = []
    for _ in range(limit):
        try:
            frames.append(camera.read(timeout=2.0))
        except CameraFault as fault:
            return frames, fault
    raise AssertionError(f"no fault after {limit} frames")


def test_playback_delivers_rgb_frames_in_order_with_live_timestamps(recording: Path) -> None:
    with RealSenseCamera(CAMERA, Playback(recording)) as camera:
        opened = time.time()
        frames, fault = read_until_lost(camera)
        assert camera.intrinsics == pytest.approx((FX, FY, WIDTH / 2, HEIGHT / 2))
    # Real-time playback drops frames when it falls behind, as a live camera does (more often on
    # a busy machine); the frames that arrive come in order, as recorded.
    numbers = [f.number for f in frames]
    assert numbers == sorted(set(numbers)) and set(numbers) <= set(range(FRAMES)), numbers
    assert len(numbers) >= FRAMES // 2, numbers
    for frame in frames:
        assert frame.rgb.shape == (HEIGHT, WIDTH, 3) and frame.rgb.dtype == np.uint8
        assert (frame.rgb[..., 0] == 8 * frame.number).all(), "red counts frames: RGB order kept"
        assert (frame.rgb[:, BAND[0] : BAND[1], 1] == 200).all() and (frame.rgb[:, : BAND[0], 1] == 0).all()
        assert not frame.rgb.flags.writeable
    stamps = np.array([f.timestamp for f in frames])
    # Re-timed to the host clock as if streamed live, with the recorded 1/30 s spacing.
    assert abs(stamps[0] - opened) < 2.0
    np.testing.assert_allclose(np.diff(stamps), np.diff(numbers) / FPS, atol=1e-3)
    # Real-time playback: the file lasts about FRAMES / FPS seconds, not a burst.
    assert fault.device_lost and "recording ended" in str(fault)


def test_end_of_recording_is_a_lost_device_and_reopening_plays_it_again(recording: Path) -> None:
    camera = RealSenseCamera(CAMERA, Playback(recording, real_time=False))
    camera.open()
    first, fault = read_until_lost(camera)
    assert fault.device_lost
    with pytest.raises(CameraFault, match=r"no new frame|recording ended"):
        camera.read(timeout=0.2)
    camera.close()
    camera.close()  # twice is harmless
    camera.open()
    again, _ = read_until_lost(camera)
    camera.close()
    assert len(first) >= FRAMES - 1 and len(again) >= FRAMES - 1
    assert again[-1].timestamp > first[-1].timestamp, "a replay is stamped now, not with the old times"


def test_a_late_frame_is_not_a_lost_device(recording: Path) -> None:
    with RealSenseCamera(CAMERA, Playback(recording)) as camera:
        camera.read(timeout=2.0)
        # Frames come every 33 ms: a 5 ms wait ends without one, while the device is still there.
        with pytest.raises(CameraFault) as late:
            camera.read(timeout=0.005)
        assert not late.value.device_lost
        assert camera.read(timeout=2.0).number > 0


def test_looping_playback_never_ends_and_timestamps_keep_increasing(recording: Path) -> None:
    with RealSenseCamera(CAMERA, Playback(recording, loop=True, real_time=False)) as camera:
        frames = [camera.read(timeout=2.0) for _ in range(2 * FRAMES + 5)]
    numbers = [f.number for f in frames]
    assert numbers.index(FRAMES - 1) < len(numbers) - 1 and numbers[numbers.index(FRAMES - 1) + 1] < 2
    assert all(b.timestamp > a.timestamp for a, b in itertools.pairwise(frames))


def test_a_stream_the_recording_lacks_is_refused(recording: Path) -> None:
    wrong = CAMERA.model_copy(update={"width": 640, "height": 480})
    with pytest.raises(CameraFault, match="cannot stream 640x480 rgb8 at 30 fps") as refused:
        RealSenseCamera(wrong, Playback(recording)).open()
    assert refused.value.device_lost


def test_missing_device_or_file_fails_fast_as_lost(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(CameraFault, match="RealSense 000000000000 is not connected") as absent:
        RealSenseCamera(CAMERA).open()
    assert absent.value.device_lost
    assert time.monotonic() - start < 5.0, "an absent device must not wait for the pipeline's 15 s"
    with pytest.raises(CameraFault, match="no such file"):
        RealSenseCamera(CAMERA, Playback(tmp_path / "missing.db3")).open()
    with pytest.raises(CameraFault, match="not open"):
        RealSenseCamera(CAMERA).read(timeout=0.1)


def software_sensor(name: str, low: float, high: float) -> tuple[rs.software_device, rs.software_sensor]:
    """A sensor with an exposure option, and its device (the sensor lives only as long as it)."""
    device = rs.software_device()
    sensor = device.add_sensor(name)
    limits = rs.option_range()
    limits.min, limits.max, limits.step, limits.default = low, high, 1.0, low
    sensor.add_option(rs.option.exposure, limits, True)
    toggle = rs.option_range()
    toggle.min, toggle.max, toggle.step, toggle.default = 0.0, 1.0, 1.0, 1.0
    sensor.add_option(rs.option.enable_auto_exposure, toggle, True)
    return device, sensor


@pytest.mark.parametrize(
    ("sensor_name", "low", "high", "expected"),
    [("RGB Camera", 1.0, 10000.0, 80.0), ("Stereo Module", 1.0, 165000.0, 8000.0)],
)
def test_fixed_exposure_in_each_sensors_units(
    sensor_name: str, low: float, high: float, expected: float
) -> None:
    _device, sensor = software_sensor(sensor_name, low, high)
    assert set_fixed_exposure(sensor, 8000) == expected
    assert sensor.get_option(rs.option.exposure) == expected
    assert sensor.get_option(rs.option.enable_auto_exposure) == 0.0


def test_exposure_out_of_range_is_refused() -> None:
    _device, sensor = software_sensor("Stereo Module", 1.0, 165000.0)
    with pytest.raises(CameraFault, match="outside its range"):
        set_fixed_exposure(sensor, 500000)
    assert sensor.get_option(rs.option.enable_auto_exposure) == 1.0, "nothing changed"
