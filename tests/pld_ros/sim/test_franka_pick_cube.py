"""The franka_pick_cube world in-process: franky drives its arm, the cube resets and lifts, cameras render.

The world binds franky-sim to 127.0.0.20 (and 127.0.0.21 for start/stop); other tests use other
loopback addresses so that they can run at the same time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import franky
import numpy as np
import pytest

from pld_ros.core.spatial import FloatArray, Pose
from pld_ros.sim.franka_pick_cube import (
    CAMERAS,
    CUBE_AREA,
    CUBE_HALF_SIZE,
    HOME_JOINTS,
    FrankaPickCubeWorld,
)
from tests.franka_pick import move_to, pick_up

pytestmark = pytest.mark.sim_in_process

HOST = "127.0.0.20"
SPARE_HOST = "127.0.0.21"
# Not square, so that a swapped width and height shows.
WIDTH, HEIGHT = 112, 96


@pytest.fixture(scope="module")
def world(frozen_heap: None) -> Iterator[FrankaPickCubeWorld]:
    with FrankaPickCubeWorld(HOST, render_width=WIDTH, render_height=HEIGHT, seed=7) as started:
        yield started


@pytest.fixture(scope="module")
def robot(world: FrankaPickCubeWorld) -> franky.Robot:
    arm = franky.Robot(world.host, realtime_config=franky.RealtimeConfig.Ignore)
    arm.relative_dynamics_factor = 0.3
    return arm


def wait_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not done() and time.monotonic() < end:
        time.sleep(0.01)
    assert done(), f"timed out waiting for {what}"


def alive(world: FrankaPickCubeWorld) -> bool:
    # A call, not the property itself: mypy would keep the property narrowed across start and stop.
    return world.physics_alive


def yaw_of(pose: Pose) -> float:
    x, y, z, w = pose.orientation
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def project(world: FrankaPickCubeWorld, camera: str, point: FloatArray) -> tuple[float, float]:
    """Pixel (u, v) of a base-frame point, through the camera's published intrinsics and pose."""
    fx, fy, cx, cy = world.intrinsics(camera)
    x, y, z, _ = np.linalg.inv(world.camera_pose(camera).matrix()) @ np.append(point, 1.0)
    assert z > 0, f"{point} is behind the {camera} camera"
    return fx * x / z + cx, fy * y / z + cy


def red_mask(frame: np.ndarray) -> np.ndarray:
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return (r > 90) & (r > 2 * g) & (r > 2 * b)


def test_franky_connects_at_the_home_pose_and_moves_the_arm(
    world: FrankaPickCubeWorld, robot: franky.Robot
) -> None:
    np.testing.assert_allclose(robot.current_joint_state.position, HOME_JOINTS, atol=0.02)
    start = robot.current_cartesian_state.pose.end_effector_pose
    target = np.add(start.translation, (0.05, 0.0, -0.05))
    move_to(robot, target, np.array(start.quaternion))
    reached = np.array(robot.current_cartesian_state.pose.end_effector_pose.translation)
    assert np.linalg.norm(reached - target) < 0.005
    assert world.physics_alive
    # The physics kept a usable pace while franky was driving it (2 shared cores: generous).
    assert world.real_time_factor() > 0.2


def test_reset_places_the_cube_at_rest_within_the_area(world: FrankaPickCubeWorld) -> None:
    poses = [world.reset_scene(randomize=True) for _ in range(40)]
    xs, ys = (np.array([p.position[axis] for p in poses]) for axis in (0, 1))
    yaws = np.array([yaw_of(p) for p in poses])
    for values, (lo, hi) in ((xs, CUBE_AREA.x), (ys, CUBE_AREA.y), (yaws, CUBE_AREA.yaw)):
        assert values.min() >= lo and values.max() <= hi
        assert np.ptp(values) > 0.5 * (hi - lo), "the layouts should spread over the area"
    # The cube is where reset_scene says, and stays there: placed at rest, not dropped.
    time.sleep(0.3)
    settled = world.cube_pose()
    np.testing.assert_allclose(settled.position, poses[-1].position, atol=0.002)
    assert abs(settled.position[2] - CUBE_HALF_SIZE) < 0.002
    # A seed gives the same layout every time; no randomization gives the area's centre.
    assert np.array_equal(world.reset_scene(seed=42).position, world.reset_scene(seed=42).position)
    centre = world.reset_scene(randomize=False)
    np.testing.assert_allclose(centre.position, (*CUBE_AREA.centre[:2], CUBE_HALF_SIZE))


def test_success_is_privileged_truth_about_the_cube_height(world: FrankaPickCubeWorld) -> None:
    resting = world.reset_scene(randomize=False)
    time.sleep(0.2)
    assert not world.privileged_success()
    assert abs(world.cube_lift()) < 0.002
    # Lifted (by hand) well above the 4 cm threshold: it counts until it has fallen back.
    world.set_cube_pose(Pose.of(resting.position + np.array([0.0, 0.0, 0.3]), resting.orientation))
    assert world.privileged_success()
    wait_until(lambda: world.cube_lift() < 0.01, 5.0, "the cube to fall back onto the table")
    assert not world.privileged_success()


@pytest.mark.slow
def test_a_scripted_franky_grasp_and_lift_succeeds(world: FrankaPickCubeWorld, robot: franky.Robot) -> None:
    gripper = franky.Gripper(world.host)
    cube = world.reset_scene(seed=3)
    time.sleep(0.2)
    assert not world.privileged_success()
    x, y, _ = cube.position
    pick_up(robot, gripper, x, y, yaw_of(cube))
    assert world.privileged_success(), f"cube lifted by only {world.cube_lift():.3f} m"
    np.testing.assert_allclose(world.cube_pose().position[:2], (x, y), atol=0.01)
    gripper.move(0.08, 0.1)
    wait_until(lambda: not world.privileged_success(), 5.0, "the released cube to drop")


def test_fingers_pushed_past_their_stop_open_again(world: FrankaPickCubeWorld) -> None:
    """A violent arm motion can push franky-sim's closed fingers past their joint limit, where their
    meshes interpenetrate and lock (5 mm past the stop stays shut against a full-force open); the
    world keeps them within range, as a real hand's mechanical stop does."""
    gripper = franky.Gripper(world.host)
    assert gripper.move(0.0, 0.1)
    sim = world._started()  # the push stands in for a violent motion, which cannot be made to order
    with sim.lock:
        for name in ("robot0_finger_joint1", "robot0_finger_joint2"):
            sim.data.qpos[sim.model.joint(name).qposadr[0]] = -0.005
    time.sleep(0.3)
    assert gripper.width > -0.001
    assert gripper.move(0.08, 0.1)
    assert gripper.width > 0.075


def top_of_a_cube_in_view(world: FrankaPickCubeWorld, camera: str) -> FloatArray:
    """Where the centre of the cube's top face goes so that ``camera`` sees the cube unobstructed."""
    if camera == "side":
        # The corner of the area nearest to the side camera: nothing of the arm is in between.
        return np.array([CUBE_AREA.x[1], CUBE_AREA.y[0], 2 * CUBE_HALF_SIZE])
    # Below the hand, where the camera's optical axis meets the table.
    view = world.camera_pose(camera)
    axis = view.matrix()[:3, 2]
    top: FloatArray = view.position + axis * (2 * CUBE_HALF_SIZE - view.position[2]) / axis[2]
    return top


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_renders_are_frames_of_the_scene_where_the_intrinsics_say(
    world: FrankaPickCubeWorld, camera: str
) -> None:
    top = top_of_a_cube_in_view(world, camera)
    world.set_cube_pose(Pose.of(top - [0.0, 0.0, CUBE_HALF_SIZE], (0.0, 0.0, 0.0, 1.0)))
    time.sleep(0.1)

    frame = world.render(camera)
    assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
    assert frame.std() > 10, "a blank frame"
    other = "side" if camera == "wrist" else "wrist"
    assert np.abs(frame.astype(int) - world.render(other)).mean() > 10, "both cameras show the same"

    fx, fy, cx, cy = world.intrinsics(camera)
    assert fx == fy and (cx, cy) == ((WIDTH - 1) / 2, (HEIGHT - 1) / 2)
    assert math.degrees(2 * math.atan(HEIGHT / 2 / fy)) == pytest.approx(CAMERAS[camera].fovy)
    red = red_mask(frame)
    u, v = project(world, camera, top)
    assert red[round(v), round(u)], f"the cube's top should be at pixel ({u:.1f}, {v:.1f})"
    rows, cols = np.nonzero(red)
    assert abs(cols.mean() - u) < 4 and abs(rows.mean() - v) < 4
    # 12 cm to the side on the table there is no cube.
    u_off, v_off = project(world, camera, top + np.array([0.0, 0.12, -2 * CUBE_HALF_SIZE]))
    if 0 <= u_off < WIDTH and 0 <= v_off < HEIGHT:
        assert not red[round(v_off), round(u_off)]


def test_a_taken_address_is_refused_and_stop_frees_it_again(world: FrankaPickCubeWorld) -> None:
    with pytest.raises(OSError, match=r"cannot bind franky-sim to 127\.0\.0\.20"):
        FrankaPickCubeWorld(HOST).start()
    slow = FrankaPickCubeWorld(SPARE_HOST, real_time_factor=0.5)
    with slow:
        assert alive(slow)
        time.sleep(1.0)
        # Half speed asked for: the physics sleeps twice as long per step, so it cannot run faster.
        assert 0.05 < slow.real_time_factor() < 0.6
    assert not alive(slow)
    with pytest.raises(RuntimeError, match="not started"):
        slow.cube_pose()
    with FrankaPickCubeWorld(SPARE_HOST) as again:
        assert alive(again)


def resident_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6


def test_the_servers_quaternion_from_each_cartesian_command_leaks_nothing() -> None:
    # franky-sim's server builds a quaternion from a strided view of every Cartesian command, once
    # per 1 ms tick; unmended, 100000 of them leave 8 MB behind.
    from franky_sim.franka_robot_server import pin

    command = np.eye(4).reshape(-1)
    angle = 0.3
    command[:2] = math.cos(angle), math.sin(angle)
    command[4:6] = -math.sin(angle), math.cos(angle)
    rotation = command.reshape((4, 4), order="F")[:3, :3]
    assert not rotation.flags.f_contiguous  # the server's case
    quaternion = pin.Quaternion(rotation)
    np.testing.assert_allclose(
        [quaternion.x, quaternion.y, quaternion.z, quaternion.w],
        [0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2)],
        atol=1e-12,
    )
    before = resident_mb()
    for _ in range(100_000):
        pin.Quaternion(rotation)
    assert resident_mb() - before < 2.0
