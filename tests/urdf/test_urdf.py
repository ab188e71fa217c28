"""The robot descriptions in urdf/: well-formed trees, the documented joints and limits, kinematics
that agree with independent models, and cameras in the REP-103 optical convention."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import franky_sim
import i2rt.robot_models
import mujoco
import numpy as np
import pinocchio as pin
import pytest
import yourdfpy
from i2rt.robots.utils import ArmType, GripperType, combine_arm_and_gripper_xml
from numpy.typing import NDArray

from tests.conftest import ROOT

URDF_DIR = ROOT / "urdf"
MODELS = ("fr3", "panda", "yam")
Matrix = NDArray[np.float64]

# The frames docs/topics.md promises: the base (URDF root) and the end effector of each model.
ROOT_LINK = {"fr3": "fr3_link0", "panda": "panda_link0", "yam": "base_link"}
TCP = {"fr3": "fr3_hand_tcp", "panda": "panda_hand_tcp", "yam": "tcp"}
CAMERAS = {"fr3": ("wrist", "side"), "panda": ("wrist", "side"), "yam": ("wrist",)}

# Franka's documented joint-space limits ("Robot and interface specifications", control
# parameters): lower, upper (rad), velocity (rad/s), torque (N m) of joints 1..7.
FRANKA_LIMITS = {
    "fr3": [
        (-2.7437, 2.7437, 2.62, 87.0),
        (-1.7837, 1.7837, 2.62, 87.0),
        (-2.9007, 2.9007, 2.62, 87.0),
        (-3.0421, -0.1518, 2.62, 87.0),
        (-2.8065, 2.8065, 5.26, 12.0),
        (0.5445, 4.5169, 4.18, 12.0),
        (-3.0159, 3.0159, 5.26, 12.0),
    ],
    "panda": [
        (-2.8973, 2.8973, 2.175, 87.0),
        (-1.7628, 1.7628, 2.175, 87.0),
        (-2.8973, 2.8973, 2.175, 87.0),
        (-3.0718, -0.0698, 2.175, 87.0),
        (-2.8973, 2.8973, 2.61, 12.0),
        (-0.0175, 3.7525, 2.61, 12.0),
        (-2.8973, 2.8973, 2.61, 12.0),
    ],
}
# Franka's documented kinematics (Craig's modified DH: a, d, alpha per joint, then the flange).
FRANKA_DH = [
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
]
FRANKA_FLANGE_D = 0.107
# franky / libfranka's default end effector for the Franka Hand (F_T_EE): the hand is turned
# -45 deg about the flange z axis and the TCP sits 0.1034 m out along it.
HAND_TCP_OFFSET = 0.1034
HAND_YAW = -math.pi / 4
FRANKA_FINGER_TRAVEL = 0.04

# The side camera's assumed pose in the Franka base frame (the simulated world mounts its side
# camera here too): side_camera_link at xyz, rpy; the table area it must see, and the field of
# view of the D435 colour stream (horizontal, vertical).
SIDE_CAMERA_XYZ = (0.5, -0.8, 0.6)
SIDE_CAMERA_RPY = (0.0, math.radians(35.0), math.pi / 2)
TABLE_AREA = ((0.3, 0.7), (-0.3, 0.3))
D435_FOV = (math.radians(69.0), math.radians(42.0))
D405_FOV = (math.radians(87.0), math.radians(58.0))

# REP-103: the optical frame's axes expressed in the camera body frame (x forward, y left, z up):
# optical x (right) = -y, optical y (down) = -z, optical z (forward) = x.
OPTICAL_IN_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

POSITION_TOL = 1e-3  # m
ANGLE_TOL = 0.01  # rad


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@cache
def load(model: str) -> yourdfpy.URDF:
    return yourdfpy.URDF.load(str(URDF_DIR / f"{model}.urdf"), load_meshes=False)


def parse_text(text: str) -> yourdfpy.URDF:
    return yourdfpy.URDF.load(io.BytesIO(text.encode()), load_meshes=False)


def transform(robot: yourdfpy.URDF, frame: str, base: str) -> Matrix:
    result: Matrix = np.asarray(robot.get_transform(frame, base), dtype=np.float64)
    return result


def pose_errors(a: Matrix, b: Matrix) -> tuple[float, float]:
    """Position distance (m) and rotation angle (rad) between two homogeneous transforms."""
    cos = (np.trace(a[:3, :3].T @ b[:3, :3]) - 1.0) / 2.0
    return float(np.linalg.norm(a[:3, 3] - b[:3, 3])), float(np.arccos(np.clip(cos, -1.0, 1.0)))


def assert_same_pose(got: Matrix, want: Matrix, what: str) -> None:
    distance, angle = pose_errors(got, want)
    assert distance <= POSITION_TOL and angle <= ANGLE_TOL, (
        f"{what}: off by {distance * 1000:.2f} mm and {angle:.4f} rad"
    )


def homogeneous(rotation: Matrix, translation: tuple[float, float, float] | Matrix) -> Matrix:
    result = np.eye(4)
    result[:3, :3] = rotation
    result[:3, 3] = translation
    return result


def invert(pose: Matrix) -> Matrix:
    return np.asarray(np.linalg.inv(pose), dtype=np.float64)


def rot_x(angle: float) -> Matrix:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_z(angle: float) -> Matrix:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_rpy(roll: float, pitch: float, yaw: float) -> Matrix:
    cp, sp = math.cos(pitch), math.sin(pitch)
    rot_y = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    result: Matrix = rot_z(yaw) @ rot_y @ rot_x(roll)
    return result


def random_configurations(limits: list[tuple[float, float]], count: int, seed: int) -> Iterator[Matrix]:
    """Joint vectors spread over the whole range (kept off the stops), reproducibly."""
    rng = np.random.default_rng(seed)
    lower = np.array([lo for lo, _ in limits]) + 0.02
    upper = np.array([hi for _, hi in limits]) - 0.02
    for _ in range(count):
        yield rng.uniform(lower, upper)


def franka_dh_flange(q: Matrix) -> list[Matrix]:
    """Frames of links 1..7 and the flange from Franka's DH table (an independent reference)."""
    frames = []
    pose = np.eye(4)
    for (a, d, alpha), angle in zip(FRANKA_DH, q, strict=True):
        # Craig: Rot_x(alpha) Trans_x(a) Rot_z(theta) Trans_z(d)
        pose = pose @ homogeneous(rot_x(alpha), (a, 0.0, 0.0)) @ homogeneous(rot_z(angle), (0.0, 0.0, d))
        frames.append(pose)
    frames.append(pose @ homogeneous(np.eye(3), (0.0, 0.0, FRANKA_FLANGE_D)))
    return frames


def franka_tcp_from_flange(flange: Matrix) -> Matrix:
    result: Matrix = flange @ homogeneous(rot_z(HAND_YAW), (0.0, 0.0, HAND_TCP_OFFSET))
    return result


def tree_problems(robot: yourdfpy.URDF) -> list[str]:
    """Why a URDF is not a single tree of uniquely named links and joints (empty if it is one)."""
    problems = []
    links = [link.name for link in robot.robot.links]
    joints = [joint.name for joint in robot.robot.joints]
    for kind, names in (("link", links), ("joint", joints)):
        problems += [f"duplicate {kind} {n}" for n in sorted({n for n in names if names.count(n) > 1})]
    parent_of: dict[str, str] = {}
    for joint in robot.robot.joints:
        for end in (joint.parent, joint.child):
            if end not in links:
                problems.append(f"joint {joint.name} names unknown link {end}")
        if joint.child in parent_of:
            problems.append(f"link {joint.child} has two parents")
        parent_of[joint.child] = joint.parent
    roots = [name for name in links if name not in parent_of]
    if len(roots) != 1:
        problems.append(f"expected one root link, found {roots}")
    for name in links:
        seen = {name}
        while name in parent_of:
            name = parent_of[name]
            if name in seen:
                problems.append(f"cycle through {name}")
                break
            seen.add(name)
    return problems


@cache
def yam_reference() -> tuple[mujoco.MjModel, mujoco.MjData]:
    """i2rt's own YAM + linear_4310 model, merged by i2rt's own function (it writes a temp file)."""
    path = combine_arm_and_gripper_xml(ArmType.YAM, GripperType.LINEAR_4310)
    try:
        model = mujoco.MjModel.from_xml_path(path)
    finally:
        os.unlink(path)
    return model, mujoco.MjData(model)


def mujoco_pose(data: mujoco.MjData, kind: str, index: int) -> Matrix:
    if kind == "site":
        return homogeneous(data.site_xmat[index].reshape(3, 3), data.site_xpos[index])
    return homogeneous(data.xmat[index].reshape(3, 3), data.xpos[index])


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_every_description_is_one_valid_tree_rooted_at_the_documented_base(model: str) -> None:
    robot = load(model)
    assert robot.validate(), robot.errors
    assert tree_problems(robot) == []
    assert robot.base_link == ROOT_LINK[model]
    for frame in (TCP[model], *(f"{camera}_camera_optical_frame" for camera in CAMERAS[model])):
        assert frame in robot.link_map, frame


@pytest.mark.parametrize("model", MODELS)
def test_urdfdom_the_parser_ros_uses_accepts_every_description(model: str) -> None:
    # pinocchio reads URDF through urdfdom, like robot_state_publisher.
    parsed = pin.buildModelFromXML((URDF_DIR / f"{model}.urdf").read_text())
    actuated = load(model).actuated_joint_names
    assert set(actuated) <= {parsed.names[i] for i in range(1, parsed.njoints)}


def test_the_tree_check_reports_broken_trees() -> None:
    broken = """<robot name="broken">
      <link name="a"/><link name="b"/><link name="c"/><link name="c"/>
      <joint name="j1" type="fixed"><parent link="a"/><child link="b"/></joint>
      <joint name="j2" type="fixed"><parent link="c"/><child link="b"/></joint>
      <joint name="j3" type="fixed"><parent link="a"/><child link="ghost"/></joint>
    </robot>"""
    problems = tree_problems(yourdfpy.URDF.load(io.BytesIO(broken.encode()), build_scene_graph=False))
    assert "duplicate link c" in problems
    assert "link b has two parents" in problems
    assert "joint j3 names unknown link ghost" in problems


@pytest.mark.parametrize("model", MODELS)
def test_geometry_is_primitives_only_and_inertials_are_physical(model: str) -> None:
    robot = load(model)
    for link in robot.robot.links:
        for element in (*link.visuals, *link.collisions):
            geometry = element.geometry
            assert geometry.mesh is None, f"{link.name} uses a mesh"
            assert any(g is not None for g in (geometry.box, geometry.cylinder, geometry.sphere)), link.name
        if link.inertial is not None:
            assert link.inertial.mass > 0.0, link.name
            inertia = np.asarray(link.inertial.inertia, dtype=np.float64)
            principal = np.linalg.eigvalsh(inertia)
            assert principal.min() > 0.0, link.name
            # Any rigid body's principal moments obey the triangle inequality.
            assert 2 * principal.max() <= principal.sum() * (1 + 1e-9), link.name
    moving = [j.child for j in robot.robot.joints if j.type != "fixed"]
    assert all(robot.link_map[child].inertial is not None for child in moving)


# --------------------------------------------------------------------------------------------
# Joints and limits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fr3", "panda"])
def test_franka_joints_and_limits_are_the_documented_ones(model: str) -> None:
    robot = load(model)
    arm = [f"{model}_joint{i}" for i in range(1, 8)]
    assert robot.actuated_joint_names == [*arm, f"{model}_finger_joint1"]
    for i, (lower, upper, velocity, effort) in enumerate(FRANKA_LIMITS[model], start=1):
        joint = robot.joint_map[f"{model}_joint{i}"]
        assert joint.type == "revolute"
        assert (joint.limit.lower, joint.limit.upper) == pytest.approx((lower, upper), abs=1e-6), joint.name
        assert (joint.limit.velocity, joint.limit.effort) == pytest.approx((velocity, effort)), joint.name
    finger = robot.joint_map[f"{model}_finger_joint1"]
    assert finger.type == "prismatic"
    assert (finger.limit.lower, finger.limit.upper) == pytest.approx((0.0, FRANKA_FINGER_TRAVEL))
    mirror = robot.joint_map[f"{model}_finger_joint2"]
    assert mirror.type == "prismatic" and mirror.mimic is not None
    mimic = mirror.mimic
    assert (mimic.joint, mimic.multiplier, mimic.offset or 0.0) == (finger.name, 1.0, 0.0)


def test_yam_joints_and_ranges_are_those_of_the_i2rt_model() -> None:
    robot = load("yam")
    reference, _ = yam_reference()
    assert robot.actuated_joint_names == [f"joint{i}" for i in range(1, 8)]
    for name in robot.actuated_joint_names:
        joint = robot.joint_map[name]
        lower, upper = reference.joint(name).range
        assert joint.type == ("prismatic" if name == "joint7" else "revolute"), name
        assert (joint.limit.lower, joint.limit.upper) == pytest.approx((lower, upper), abs=1e-6), name
    mirror = robot.joint_map["joint8"]
    assert mirror.mimic is not None and (mirror.mimic.joint, mirror.mimic.multiplier) == ("joint7", 1.0)


# --------------------------------------------------------------------------------------------
# Forward kinematics against independent models
# --------------------------------------------------------------------------------------------


def franka_configurations(model: str) -> list[Matrix]:
    limits = [(lo, hi) for lo, hi, _, _ in FRANKA_LIMITS[model]]
    home = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])  # the profiles' reset pose
    return [home, *random_configurations(limits, 12, seed=7)]


def test_fr3_forward_kinematics_matches_pinocchio_on_the_franka_model() -> None:
    # franky_sim.FR3_URDF is the description the simulated FR3 reports over libfranka's protocol
    # (Franka's own kinematics, no hand), evaluated here by pinocchio.
    reference = pin.buildModelFromXML(franky_sim.FR3_URDF)
    data = reference.createData()
    robot = load("fr3")
    for q in franka_configurations("fr3"):
        pin.framesForwardKinematics(reference, data, q)
        robot.update_cfg({f"fr3_joint{i}": float(v) for i, v in enumerate(q, start=1)})
        for i in range(1, 9):
            want = data.oMf[reference.getFrameId(f"link{i}")].homogeneous
            got = transform(robot, f"fr3_link{i}", "fr3_link0")
            assert_same_pose(got, want, f"fr3_link{i} at {q.round(3)}")
        flange = data.oMf[reference.getFrameId("link8")].homogeneous
        tcp = transform(robot, "fr3_hand_tcp", "fr3_link0")
        assert_same_pose(tcp, franka_tcp_from_flange(flange), f"fr3_hand_tcp at {q.round(3)}")


def test_franka_dh_reference_agrees_with_pinocchio() -> None:
    # The Panda has no packaged model to compare with; its reference is Franka's DH table, checked
    # here against the packaged FR3 model (both arms share the kinematics, not the limits).
    reference = pin.buildModelFromXML(franky_sim.FR3_URDF)
    data = reference.createData()
    for q in franka_configurations("fr3")[:4]:
        pin.framesForwardKinematics(reference, data, q)
        for i, frame in enumerate(franka_dh_flange(q), start=1):
            assert_same_pose(frame, data.oMf[reference.getFrameId(f"link{i}")].homogeneous, f"DH link{i}")


def test_panda_forward_kinematics_matches_franka_dh_table() -> None:
    robot = load("panda")
    for q in franka_configurations("panda"):
        robot.update_cfg({f"panda_joint{i}": float(v) for i, v in enumerate(q, start=1)})
        frames = franka_dh_flange(q)
        for i, want in enumerate(frames, start=1):
            assert_same_pose(transform(robot, f"panda_link{i}", "panda_link0"), want, f"panda_link{i}")
        tcp = transform(robot, "panda_hand_tcp", "panda_link0")
        assert_same_pose(tcp, franka_tcp_from_flange(frames[-1]), f"panda_hand_tcp at {q.round(3)}")


@pytest.mark.parametrize("model", ["fr3", "panda"])
@pytest.mark.parametrize("opening", [0.0, 0.013, FRANKA_FINGER_TRAVEL])
def test_franka_fingers_open_symmetrically_along_the_hand_y_axis(model: str, opening: float) -> None:
    robot = load(model)
    robot.update_cfg({f"{model}_finger_joint1": opening})
    left = transform(robot, f"{model}_leftfinger", f"{model}_hand")[:3, 3]
    right = transform(robot, f"{model}_rightfinger", f"{model}_hand")[:3, 3]
    np.testing.assert_allclose(left - right, [0.0, 2 * opening, 0.0], atol=1e-9)


def test_yam_forward_kinematics_matches_the_i2rt_mujoco_model() -> None:
    reference, data = yam_reference()
    robot = load("yam")
    arm = [f"joint{i}" for i in range(1, 7)]
    limits = [(float(reference.joint(n).range[0]), float(reference.joint(n).range[1])) for n in arm]
    fingers = [0.0, 0.01, 0.03, 0.0475]
    bodies = ["link1", "link2", "link3", "link4", "link5", "gripper", "tip_left", "tip_right"]
    grasp_site = reference.site("grasp_site").id
    for index, q in enumerate([np.zeros(6), *random_configurations(limits, 12, seed=11)]):
        finger = fingers[index % len(fingers)]
        positions = {**dict(zip(arm, q, strict=True)), "joint7": finger, "joint8": finger}
        for name, value in positions.items():
            data.qpos[reference.joint(name).qposadr[0]] = value
        mujoco.mj_kinematics(reference, data)
        robot.update_cfg({name: float(v) for name, v in positions.items() if name != "joint8"})
        for body in bodies:
            want = mujoco_pose(data, "body", reference.body(body).id)
            assert_same_pose(transform(robot, body, "base_link"), want, f"{body} at {q.round(3)}, {finger}")
        want = mujoco_pose(data, "site", grasp_site)
        assert_same_pose(transform(robot, "tcp", "base_link"), want, f"tcp at {q.round(3)}")


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "camera"), [(m, c) for m in MODELS for c in CAMERAS[m]])
def test_camera_optical_frames_follow_rep103(model: str, camera: str) -> None:
    robot = load(model)
    optical = transform(robot, f"{camera}_camera_optical_frame", f"{camera}_camera_link")
    np.testing.assert_allclose(optical[:3, :3], OPTICAL_IN_BODY, atol=1e-9)
    np.testing.assert_allclose(optical[:3, 3], 0.0, atol=1e-12)


def in_view(point_in_optical: Matrix, fov: tuple[float, float]) -> bool:
    x, y, z = point_in_optical
    return bool(z > 0.0 and abs(math.atan2(x, z)) < fov[0] / 2 and abs(math.atan2(y, z)) < fov[1] / 2)


@pytest.mark.parametrize("model", MODELS)
def test_wrist_camera_looks_along_the_gripper_and_sees_the_tcp(model: str) -> None:
    robot = load(model)
    robot.update_cfg(robot.zero_cfg)
    camera = transform(robot, "wrist_camera_optical_frame", TCP[model])
    approach = np.array([0.0, 0.0, 1.0])  # the TCP's z axis, out of the gripper
    assert camera[:3, 2] @ approach > math.cos(math.radians(30.0))
    tcp_in_camera = invert(camera)[:3, 3]
    assert in_view(tcp_in_camera, D405_FOV), tcp_in_camera
    assert tcp_in_camera[2] > 0.05  # not inside the lens


def test_yam_wrist_camera_is_where_the_i2rt_station_model_mounts_it() -> None:
    station_name = "yam_station_linear_4310_d405"
    path = Path(i2rt.robot_models.__file__).parent / "station" / station_name / f"{station_name}.xml"
    station = mujoco.MjModel.from_xml_path(str(path))
    data = mujoco.MjData(station)
    mujoco.mj_kinematics(station, data)
    flange = mujoco_pose(data, "body", station.body("left_gripper").id)
    camera = mujoco_pose(data, "body", station.body("left_camera").id)  # its optical frame
    want = invert(flange) @ camera
    assert_same_pose(transform(load("yam"), "wrist_camera_optical_frame", "gripper"), want, "wrist camera")


@pytest.mark.parametrize("model", ["fr3", "panda"])
def test_side_camera_sits_at_the_documented_pose_and_sees_the_table_area(model: str) -> None:
    robot = load(model)
    link = transform(robot, "side_camera_link", f"{model}_link0")
    assert_same_pose(link, homogeneous(rot_rpy(*SIDE_CAMERA_RPY), SIDE_CAMERA_XYZ), "side_camera_link")
    optical = transform(robot, "side_camera_optical_frame", f"{model}_link0")
    world_to_camera = invert(optical)
    (x0, x1), (y0, y1) = TABLE_AREA
    for corner in ((x0, y0), (x0, y1), (x1, y0), (x1, y1)):
        point = world_to_camera @ np.array([*corner, 0.0, 1.0])
        assert in_view(point[:3], D435_FOV), f"table corner {corner} out of view: {point[:3].round(3)}"
    assert optical[:3, 1] @ np.array([0.0, 0.0, 1.0]) < -0.5  # image y points down: upright image
