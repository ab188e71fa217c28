"""The OpenCV source on a video file written on the spot (no USB camera here)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from pld_ros.drivers.camera import UNCALIBRATED, CameraFault, Frame, Playback
from pld_ros.drivers.opencv_camera import OpenCvCamera
from pld_ros.profile import Camera
from tests.recordings import write_video

WIDTH, HEIGHT, FPS, FRAMES = 64, 48, 30, 12
BAND = (8, 56)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("opencv") / "color.avi"
    write_video(path, FRAMES, WIDTH, HEIGHT, FPS, BAND)
    return path


def camera_for(source: Path | str, **fields: int) -> Camera:
    return Camera(
        driver="opencv", source=str(source), **{"width": WIDTH, "height": HEIGHT, "fps": FPS, **fields}
    )


def read_all(camera: OpenCvCamera) -> tuple[list[Frame], CameraFault]:
    frames: list[Frame] = []
    while len(frames) < 10 * FRAMES:
        try:
            frames.append(camera.read(timeout=1.0))
        except CameraFault as fault:
            return frames, fault
    raise AssertionError("the file never ended")


def test_a_video_file_plays_in_real_time_as_rgb_and_its_end_is_a_lost_device(video: Path) -> None:
    with OpenCvCamera(camera_for(video)) as camera:
        start = time.time()
        frames, fault = read_all(camera)
        elapsed = time.time() - start
        assert camera.intrinsics == UNCALIBRATED
    assert [f.number for f in frames] == list(range(FRAMES))
    for i, frame in enumerate(frames):
        assert frame.rgb.shape == (HEIGHT, WIDTH, 3) and frame.rgb.dtype == np.uint8
        # Red counts frames, blue is 50: the channels come out in RGB order, not OpenCV's BGR.
        assert (frame.rgb[..., 0] == 8 * i).all() and (frame.rgb[..., 2] == 50).all()
        assert (frame.rgb[:, BAND[0] : BAND[1], 1] == 200).all() and (frame.rgb[:, : BAND[0], 1] == 0).all()
    stamps = np.array([f.timestamp for f in frames])
    assert abs(stamps[0] - start) < 1.0 and (np.diff(stamps) > 0).all()
    # Paced at the profile's 30 fps: 12 frames take about 0.37 s (generous bounds: busy machine).
    assert (FRAMES - 1) / FPS * 0.8 < stamps[-1] - stamps[0] < 2.0 and elapsed < 3.0
    assert fault.device_lost and "video file ended" in str(fault)


def test_a_looping_file_never_ends_and_reopening_after_the_end_plays_again(video: Path) -> None:
    with OpenCvCamera(camera_for(video), Playback(video, loop=True, real_time=False)) as camera:
        frames = [camera.read(timeout=1.0) for _ in range(2 * FRAMES + 3)]
    assert [int(f.rgb[0, 0, 0]) // 8 for f in frames] == [i % FRAMES for i in range(2 * FRAMES + 3)]
    assert all(b.timestamp > a.timestamp for a, b in itertools.pairwise(frames))

    camera = OpenCvCamera(camera_for(video), Playback(video, real_time=False))
    camera.open()
    first, _ = read_all(camera)
    camera.close()
    camera.open()
    again, _ = read_all(camera)
    camera.close()
    camera.close()
    assert len(first) == len(again) == FRAMES


def test_a_frame_that_is_not_due_yet_is_late_not_lost(video: Path) -> None:
    with OpenCvCamera(camera_for(video)) as camera:
        camera.read(timeout=1.0)
        with pytest.raises(CameraFault) as late:
            camera.read(timeout=0.001)
        assert not late.value.device_lost
        assert camera.read(timeout=1.0).number == 1


def test_frames_of_another_size_than_the_profile_are_refused(video: Path) -> None:
    with (
        OpenCvCamera(camera_for(video, width=640, height=480)) as camera,
        pytest.raises(CameraFault, match="delivers 64x48 frames, the profile says 640x480"),
    ):
        camera.read(timeout=1.0)


def test_a_source_that_cannot_be_opened_is_a_lost_device(tmp_path: Path) -> None:
    with pytest.raises(CameraFault, match="cannot be opened") as missing:
        OpenCvCamera(camera_for(tmp_path / "missing.avi")).open()
    assert missing.value.device_lost
    with pytest.raises(CameraFault, match="not open"):
        OpenCvCamera(camera_for(tmp_path / "missing.avi")).read(timeout=0.1)
