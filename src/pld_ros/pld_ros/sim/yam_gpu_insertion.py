"""The simulated twin of yam_gpu_insertion: a YAM arm, a motherboard with slots 1 and 3, a GPU card.

Kinematic throughout, like the i2rt driver's ``SimRobot`` that plays the arm: nothing here
integrates forces. The world is told where the arm is (:meth:`YamGpuInsertionWorld.update` with
joint positions and gripper closure, e.g. from :meth:`I2rtArmBackend.read_state`) and moves the
card by rules that stand in for contact:

* **grasp**: the card attaches to the gripper when the fingers close past the card's width with
  the card between them (across the closing axis, overlapping the finger pads), and detaches when
  they open again. While attached it moves rigidly with the TCP, except that it cannot go through
  the table, the board, a connector or deeper than the latch of a slot: it then slips along the
  fingers and the grasp offset changes, as a real grasp would.
* **slots**: a card whose bottom edge crosses a connector's top while aligned with it (within
  3 mm across, 6 mm along, 0.06 rad in yaw and tilt) enters the slot and can then only slide
  along the slot's vertical axis: a sideways pull of more than 1 cm tears it out of the fingers.
  A card entering or released in a slot sits at the latch (:data:`PARTIAL_DEPTH`); pressing it
  home to :data:`FULL_DEPTH` needs a downward push on its top edge by the closed fingertips (a
  card held in the fingers slips instead of seating).
* **release**: a released card stays in its slot, drops into an aligned slot from up to 3 cm
  above it, or otherwise falls flat (on its most-downward face) onto whatever is below its centre:
  a connector, the board, the table, or the floor beyond the table's edge.

Privileged stage signals (the profile's stage order, see :class:`StageSignals`) and failure
injection for tests and soak runs (:meth:`YamGpuInsertionWorld.drop_part`,
:meth:`YamGpuInsertionWorld.knock_part`) read and write this state directly. The wrist and side
cameras are rendered offscreen on request.

Frames: MuJoCo's world frame is the arm's base frame (``base_link``, on the table top, x
forward); every pose here is in it. The card's frame is its centre, x along its length, y across
its thickness, z up its height.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np
from i2rt.robots.utils import ArmType, GripperType, combine_arm_and_gripper_xml
from numpy.typing import NDArray

from pld_ros.core.spatial import FloatArray, Pose, quat_from_rotvec, quat_to_matrix

Image = NDArray[np.uint8]

READY_JOINTS = (0.0, 1.6, 1.35, -1.32, 0.0, 1.57)
"""Arm joints of the ready pose: TCP 28 cm ahead and 12 cm above the base, pointing down, fingers
closing along x; away from every joint limit and above the whole task area."""

CARD_HALF = (0.05, 0.01, 0.0225)
"""m, half the card's length, thickness and height (a 10 x 2 x 4.5 cm stand-in for a GPU)."""
TABLE_HEIGHT = 0.75
"""m from the floor to the table top (the arm's mounting plane, z = 0)."""
TABLE_X = (-0.25, 0.65)
TABLE_Y = (-0.5, 0.5)
BOARD_CENTER = (0.32, 0.0)
BOARD_HALF = (0.08, 0.1, 0.001)
BOARD_TOP = 2 * BOARD_HALF[2]
SLOT_HALF = (0.004, 0.055, 0.006)
"""m, half the connector's width (x), length (y, along the slot) and height."""
SLOT_TOP = BOARD_TOP + 2 * SLOT_HALF[2]
SLOTS = {1: (0.30, 0.0), 3: (0.34, 0.0)}
"""Connector centres (x, y) by slot number; slots run along y, 4 cm apart as on a real board."""
PARTIAL_DEPTH = 0.004
"""m of card edge inside the connector at the latch: where a card dropped or lowered in stops."""
FULL_DEPTH = 0.008
"""m of card edge inside the connector when pressed fully home."""
HOME = (0.22, -0.13)
"""Centre of the card's home area on the table."""
HOME_YAW = math.pi / 2
"""The card's heading at home: its length along y, parallel to the slots."""
HOME_RADIUS = 0.04
"""m: the card counts as home when its centre is this close to :data:`HOME` ..."""
HOME_YAW_TOLERANCE = 0.3
"""rad: ... and its heading this close to :data:`HOME_YAW` (either way round)."""
STAGES = ("insert_slot1", "move_to_slot3", "press_slot3", "unplug_return")
"""The profile's stage names, in the order of :class:`StageSignals`."""

_ALIGN_ACROSS = 0.003
_ALIGN_ALONG = 0.006
_ALIGN_ANGLE = 0.06
_TEAR_DISTANCE = 0.01
_DROP_CAPTURE = 0.03
# The linear_4310 fingertips: pads 3 cm long up from the TCP, 3.6 cm wide, about 8.5 mm thick.
_PAD_LENGTH = 0.03
_PAD_HALF_WIDTH = 0.018
_FINGER_THICKNESS = 0.0085
_MIN_PAD_OVERLAP = 0.005
_GRIP_MARGIN = 0.001
_RELEASE_MARGIN = 0.004
_PRESS_CLOSURE = 0.9
_UPRIGHT_COS = math.cos(_ALIGN_ANGLE)
_EPS = 1e-4


@dataclass(frozen=True)
class StageSignals:
    """The privileged success of each stage, in the profile's order (heads 0-3)."""

    inserted_slot1: bool
    """insert_slot1: the card stands in slot 1, at least at the latch."""
    at_slot3: bool
    """move_to_slot3: the card stands in slot 3 at the latch, not yet pressed home."""
    pressed_slot3: bool
    """press_slot3: the card is pressed fully into slot 3."""
    home: bool
    """unplug_return: the card rests upright on the table in its home area, released."""

    def of(self, stage: str) -> bool:
        """The signal of a stage by its profile name."""
        return (self.inserted_slot1, self.at_slot3, self.pressed_slot3, self.home)[STAGES.index(stage)]


@dataclass(frozen=True)
class CameraMount:
    """A rendered camera (MuJoCo convention: looks along -z, image up along y)."""

    body: str
    """Body it is fixed to; "" for the world."""
    position: tuple[float, float, float]
    """m, in that frame (for the wrist camera: the TCP's frame, see :data:`CAMERAS`)."""
    forward: tuple[float, float, float]
    """Optical axis in that frame."""
    right: tuple[float, float, float]
    """Image right in that frame (orthogonal to ``forward``)."""
    fovy: float
    """Vertical field of view, degrees."""


# The wrist camera as in urdf/yam.urdf (a D405 on i2rt's mount, 70 mm off the gripper axis and
# canted 25 deg towards it), written in the TCP frame: z out of the fingertips, y the fingers'
# closing axis. Vertical FOV of the D405 (58 deg); the side camera is a D435 (42 deg).
_WRIST_CANT = math.radians(25.0)
CAMERAS: dict[str, CameraMount] = {
    "wrist": CameraMount(
        body="gripper",
        position=(-0.0704, 0.0, -0.0677),
        forward=(math.sin(_WRIST_CANT), 0.0, math.cos(_WRIST_CANT)),
        right=(0.0, -1.0, 0.0),
        fovy=58.0,
    ),
    "side": CameraMount(
        body="",
        position=(0.95, -0.75, 0.55),
        # Towards (0.25, 0.0, 0.14): the board, the home area and the arm above them.
        forward=(-0.7, 0.75, -0.41),
        right=(0.0, 0.0, 0.0),
        fovy=42.0,
    ),
}
"""The world's cameras by name (the profile's camera names)."""


def _rot_z(angle: float) -> FloatArray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _yaw(rotation: FloatArray) -> float:
    return math.atan2(rotation[1, 0], rotation[0, 0])


def _half_turn_distance(a: float, b: float) -> float:
    """Angle between two headings of a part that looks the same turned by half a turn."""
    return abs((a - b + math.pi / 2) % math.pi - math.pi / 2)


def _transform(rotation: FloatArray, position: FloatArray) -> FloatArray:
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = position
    return m


def _camera_rotation(forward: FloatArray, right: FloatArray) -> FloatArray:
    """Rotation of a MuJoCo camera (x right, y up, z backwards) from its optical axis."""
    back = -forward / np.linalg.norm(forward)
    if not np.any(right):
        # Level with the horizon: right is horizontal.
        right = np.cross(-back, (0.0, 0.0, 1.0))
    right = right - np.dot(right, back) * back
    right = right / np.linalg.norm(right)
    return np.column_stack([right, np.cross(back, right), back])


def _gl_context(width: int, height: int) -> Any:
    # mujoco.Renderer takes its OpenGL backend from MUJOCO_GL as it was when mujoco was first
    # imported (by whichever module came first); choosing here makes rendering independent of that.
    backend = os.environ.get("MUJOCO_GL", "egl").lower()
    if backend == "osmesa":
        from mujoco.osmesa import GLContext
    elif backend == "glfw":
        from mujoco.glfw import GLContext
    else:
        from mujoco.egl import GLContext
    return GLContext(width, height)


class _Renderer:
    """Offscreen rendering with the cheap settings: no shadows, reflections, skybox or multisampling."""

    def __init__(self, model: Any, width: int, height: int) -> None:
        self._context = _gl_context(width, height)
        self._context.make_current()
        self._mjr = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._mjr)
        self._scene = mujoco.MjvScene(model, maxgeom=200)
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            self._scene.flags[flag] = 0
        self._option = mujoco.MjvOption()
        # The model's sites (TCP markers) are for people, not for the policy's cameras.
        self._option.sitegroup[:] = 0
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rect = mujoco.MjrRect(0, 0, width, height)
        self._pixels = np.empty((height, width, 3), dtype=np.uint8)

    def render(self, model: Any, data: Any, camera_id: int) -> Image:
        self._context.make_current()
        self._camera.fixedcamid = camera_id
        mujoco.mjv_updateScene(
            model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        mujoco.mjr_render(self._rect, self._scene, self._mjr)
        mujoco.mjr_readPixels(self._pixels, None, self._rect, self._mjr)
        # OpenGL's rows run bottom-up.
        return np.ascontiguousarray(self._pixels[::-1])

    def close(self) -> None:
        self._context.make_current()
        self._mjr.free()
        self._context.free()


class YamGpuInsertionWorld:
    """The board, the card and the cameras around one kinematic YAM arm (see the module doc).

    ``model_path`` is the arm's MJCF (the driver's, :attr:`I2rtArmBackend.model_path`); by default
    the YAM with the linear_4310 gripper. Call everything but :meth:`render` from one thread;
    :meth:`render` may run in another (always the same one: the OpenGL context is made there).
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        render_width: int = 128,
        render_height: int = 128,
        seed: int = 0,
    ) -> None:
        if render_width <= 0 or render_height <= 0:
            raise ValueError(f"render size must be positive, got {render_width}x{render_height}")
        self.width = render_width
        self.height = render_height
        self._rng = np.random.default_rng(seed)
        path = model_path or combine_arm_and_gripper_xml(ArmType.YAM, GripperType.LINEAR_4310)
        self._model, self._camera_ids = self._build(path)
        self._data = mujoco.MjData(self._model)
        model = self._model
        self._arm_qpos = np.array([model.joint(f"joint{i}").qposadr[0] for i in range(1, 7)])
        fingers = [j for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_SLIDE]
        self._finger_qpos = np.array([model.jnt_qposadr[j] for j in fingers], dtype=np.intp)
        self._finger_travel = float(model.jnt_range[fingers[0]][1]) if fingers else 0.0
        self._tcp_site = model.site("grasp_site").id
        self._part_mocap = model.body_mocapid[model.body("gpu").id]
        # Guards the MuJoCo data between update()/scene changes and render() in another thread.
        self._lock = threading.RLock()
        self._renderer: _Renderer | None = None
        self._render_thread: int | None = None

        self._part = np.eye(4)
        self._attached = False
        self._grasp = np.eye(4)
        """The card's pose in the TCP frame while attached."""
        self._slot: int | None = None
        self._depth = 0.0
        self._gap = 2.0 * self._finger_travel
        self.update(READY_JOINTS, 0.0)
        self.reset_scene(randomize=False)

    # ---- scene -------------------------------------------------------------------------------

    def _build(self, arm_path: str) -> tuple[Any, dict[str, int]]:
        spec = mujoco.MjSpec.from_file(arm_path)
        # Shadows and multisampling cost most of the CPU render time; 128 px views gain little
        # from them. The offscreen buffer only needs the render size.
        spec.visual.quality.shadowsize = 0
        spec.visual.quality.offsamples = 0
        spec.visual.global_.offwidth = self.width
        spec.visual.global_.offheight = self.height
        spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
        spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
        for geom in spec.geoms:
            # Kinematic world: nothing collides, the rules in update() stand in for contact.
            geom.contype = 0
            geom.conaffinity = 0
        box = mujoco.mjtGeom.mjGEOM_BOX
        world = spec.worldbody
        world.add_light(
            pos=[0.3, -0.3, 1.2], dir=[-0.1, 0.25, -1.0], castshadow=False, diffuse=[0.5, 0.5, 0.5]
        )
        world.add_geom(
            name="floor",
            type=mujoco.mjtGeom.mjGEOM_PLANE,
            size=[2.0, 2.0, 0.01],
            pos=[0.0, 0.0, -TABLE_HEIGHT],
            rgba=[0.3, 0.3, 0.32, 1],
        )
        world.add_geom(
            name="table",
            type=box,
            size=[(TABLE_X[1] - TABLE_X[0]) / 2, (TABLE_Y[1] - TABLE_Y[0]) / 2, TABLE_HEIGHT / 2],
            pos=[sum(TABLE_X) / 2, sum(TABLE_Y) / 2, -TABLE_HEIGHT / 2],
            rgba=[0.66, 0.53, 0.40, 1],
        )
        # The home area, drawn on the table so a policy can see where the card goes back.
        world.add_geom(
            name="home_area",
            type=mujoco.mjtGeom.mjGEOM_CYLINDER,
            size=[HOME_RADIUS + CARD_HALF[0], 0.0005, 0.0],
            pos=[*HOME, 0.0005],
            rgba=[0.85, 0.85, 0.8, 1],
        )
        world.add_geom(
            name="board",
            type=box,
            size=list(BOARD_HALF),
            pos=[*BOARD_CENTER, BOARD_HALF[2]],
            rgba=[0.1, 0.4, 0.2, 1],
        )
        for number, (x, y) in SLOTS.items():
            world.add_geom(
                name=f"slot{number}",
                type=box,
                size=list(SLOT_HALF),
                pos=[x, y, BOARD_TOP + SLOT_HALF[2]],
                rgba=[0.08, 0.08, 0.08, 1],
            )
        gpu = world.add_body(name="gpu", mocap=True)
        gpu.add_geom(name="gpu", type=box, size=list(CARD_HALF), rgba=[0.9, 0.45, 0.1, 1])
        # A dark band along the top edge (the face the fingertips push on), proud of the card by
        # half a millimetre so its faces do not z-fight with the card's.
        gpu.add_geom(
            name="gpu_edge",
            type=box,
            size=[CARD_HALF[0] + 0.0005, CARD_HALF[1] + 0.0005, 0.0035],
            pos=[0.0, 0.0, CARD_HALF[2] - 0.003],
            rgba=[0.2, 0.2, 0.22, 1],
        )

        # The wrist camera is given in the TCP frame; the model knows the TCP in the gripper body.
        arm = spec.compile()
        site = arm.site("grasp_site")
        body_from_tcp = Pose.of(site.pos, np.roll(site.quat, -1)).matrix()
        for name, mount in CAMERAS.items():
            rotation = _camera_rotation(np.asarray(mount.forward), np.asarray(mount.right))
            pose = _transform(rotation, np.asarray(mount.position))
            parent = world
            if mount.body:
                pose = body_from_tcp @ pose
                parent = spec.body(mount.body)
            quat = Pose.from_matrix(pose).orientation
            parent.add_camera(name=name, pos=pose[:3, 3].tolist(), quat=[quat[3], *quat[:3]], fovy=mount.fovy)
        model = spec.compile()
        return model, {name: model.camera(name).id for name in CAMERAS}

    # ---- the arm -----------------------------------------------------------------------------

    def update(self, joints: tuple[float, ...] | FloatArray, gripper_closure: float) -> None:
        """Move the arm to measured joints and gripper closure, then apply the card's rules."""
        q = np.asarray(joints, dtype=np.float64)
        if q.shape != (6,) or not np.all(np.isfinite(q)) or not np.isfinite(gripper_closure):
            raise ValueError(
                f"expected 6 finite joints and a finite closure, got {joints}, {gripper_closure}"
            )
        with self._lock:
            closure = float(np.clip(gripper_closure, 0.0, 1.0))
            gap = (1.0 - closure) * 2.0 * self._finger_travel
            self._data.qpos[self._arm_qpos] = q
            self._data.qpos[self._finger_qpos] = gap / 2.0
            mujoco.mj_kinematics(self._model, self._data)
            tcp = self._tcp_matrix()
            width = self._width_across_fingers(tcp)
            if self._attached:
                if gap > width + _RELEASE_MARGIN:
                    self._attached = False
                    self._settle()
                else:
                    self._carry(tcp)
            elif gap <= width + _GRIP_MARGIN < self._gap and self._between_fingers(tcp, width):
                self._attached = True
                self._grasp = np.linalg.inv(tcp) @ self._part
            elif closure >= _PRESS_CLOSURE:
                self._press(tcp)
            self._gap = gap
            self._sync()

    def _tcp_matrix(self) -> FloatArray:
        return _transform(
            self._data.site_xmat[self._tcp_site].reshape(3, 3).copy(),
            self._data.site_xpos[self._tcp_site].copy(),
        )

    @property
    def tcp_pose(self) -> Pose:
        """The TCP (the driver model's grasp site) where the arm was last put."""
        return Pose.from_matrix(self._tcp_matrix())

    def _extents(self, rotation: FloatArray) -> FloatArray:
        """Half extents of the card along the axes of a frame with this rotation."""
        relative = rotation.T @ self._part[:3, :3]
        result: FloatArray = np.abs(relative) @ np.asarray(CARD_HALF)
        return result

    def _width_across_fingers(self, tcp: FloatArray) -> float:
        return 2.0 * float(self._extents(tcp[:3, :3])[1])

    def _between_fingers(self, tcp: FloatArray, width: float) -> bool:
        centre = tcp[:3, :3].T @ (self._part[:3, 3] - tcp[:3, 3])
        extents = self._extents(tcp[:3, :3])
        # The TCP's z points out of the fingertips: the pads span z in [-_PAD_LENGTH, 0].
        overlap = min(centre[2] + extents[2], 0.0) - max(centre[2] - extents[2], -_PAD_LENGTH)
        return bool(
            abs(centre[1]) + width / 2 <= self._gap / 2 + _GRIP_MARGIN
            and abs(centre[0]) <= _PAD_HALF_WIDTH + extents[0]
            and overlap >= _MIN_PAD_OVERLAP
        )

    # ---- the card's rules --------------------------------------------------------------------

    def _bottom(self, pose: FloatArray) -> float:
        rotation = pose[:3, :3]
        return float(pose[2, 3] - np.abs(rotation[2]) @ np.asarray(CARD_HALF))

    def _aligned_slot(self, pose: FloatArray) -> int | None:
        rotation = pose[:3, :3]
        if rotation[2, 2] < _UPRIGHT_COS:
            return None
        for number, (x, y) in SLOTS.items():
            # Slots run along y, so the card's heading must be +-pi/2.
            if (
                abs(pose[0, 3] - x) <= _ALIGN_ACROSS
                and abs(pose[1, 3] - y) <= _ALIGN_ALONG
                and _half_turn_distance(_yaw(rotation), math.pi / 2) <= _ALIGN_ANGLE
            ):
                return number
        return None

    def _seat(self, number: int, depth: float) -> None:
        """Put the card upright in a slot at a depth, keeping its heading's half turn."""
        x, y = SLOTS[number]
        heading = math.copysign(math.pi / 2, math.sin(_yaw(self._part[:3, :3])))
        self._slot = number
        self._depth = depth
        self._part = _transform(_rot_z(heading), np.array([x, y, SLOT_TOP - depth + CARD_HALF[2]]))

    def _support(self, x: float, y: float) -> float:
        """Height of the highest surface under a point."""
        for sx, sy in SLOTS.values():
            if abs(x - sx) <= SLOT_HALF[0] and abs(y - sy) <= SLOT_HALF[1]:
                return SLOT_TOP
        if abs(x - BOARD_CENTER[0]) <= BOARD_HALF[0] and abs(y - BOARD_CENTER[1]) <= BOARD_HALF[1]:
            return BOARD_TOP
        if TABLE_X[0] <= x <= TABLE_X[1] and TABLE_Y[0] <= y <= TABLE_Y[1]:
            return 0.0
        return -TABLE_HEIGHT

    def _carry(self, tcp: FloatArray) -> None:
        desired = tcp @ self._grasp
        if self._slot is not None:
            x, y = SLOTS[self._slot]
            if math.hypot(desired[0, 3] - x, desired[1, 3] - y) > _TEAR_DISTANCE:
                # Pulled sideways out of the slot's guide: the grasp gives, the card stays.
                self._attached = False
                self._settle()
                return
            depth = SLOT_TOP - self._bottom(desired)
            if depth < 0.0:
                self._slot = None
                self._depth = 0.0
                self._part = desired
            else:
                # Held, it goes no deeper than the latch (or than it already was): the grasp slips.
                self._seat(self._slot, min(depth, max(self._depth, PARTIAL_DEPTH)))
                self._grasp = np.linalg.inv(tcp) @ self._part
            return
        slot = self._aligned_slot(desired)
        if slot is not None and self._bottom(desired) < SLOT_TOP:
            self._part = desired
            self._seat(slot, min(SLOT_TOP - self._bottom(desired), PARTIAL_DEPTH))
            self._grasp = np.linalg.inv(tcp) @ self._part
            return
        floor = self._support(desired[0, 3], desired[1, 3])
        lift = floor - self._bottom(desired)
        if lift > 0.0:
            desired[2, 3] += lift
            self._grasp = np.linalg.inv(tcp) @ desired
        self._part = desired

    def _press(self, tcp: FloatArray) -> None:
        """Closed fingertips below the top edge of a card in a slot push it down that far."""
        local = self._part[:3, :3].T @ (tcp[:3, 3] - self._part[:3, 3])
        top = self._part[2, 3] + CARD_HALF[2]
        push = top - tcp[2, 3]
        if (
            self._slot is not None
            and abs(local[0]) <= CARD_HALF[0] + _PAD_HALF_WIDTH
            and abs(local[1]) <= CARD_HALF[1] + _FINGER_THICKNESS
            and 0.0 < push < _PAD_LENGTH
        ):
            self._seat(self._slot, min(self._depth + push, FULL_DEPTH))

    def _settle(self) -> None:
        """The card let go of: it stays in its slot, drops into an aligned one, or falls flat."""
        if self._slot is not None:
            self._seat(self._slot, max(self._depth, PARTIAL_DEPTH))
            return
        slot = self._aligned_slot(self._part)
        if slot is not None and self._bottom(self._part) - SLOT_TOP <= _DROP_CAPTURE:
            self._seat(slot, PARTIAL_DEPTH)
            return
        rotation = self._part[:3, :3]
        # Lands on the face most nearly facing down: turn the axis closest to vertical upright.
        axis = int(np.argmax(np.abs(rotation[2])))
        current = rotation[:, axis] * np.sign(rotation[2, axis])
        tilt = math.acos(float(np.clip(current[2], -1.0, 1.0)))
        turn = np.cross(current, (0.0, 0.0, 1.0))
        if tilt > 1e-9:
            rotation = quat_to_matrix(quat_from_rotvec(turn / np.linalg.norm(turn) * tilt)) @ rotation
        x, y = self._part[0, 3], self._part[1, 3]
        height = self._support(x, y) + CARD_HALF[axis]
        self._part = _transform(rotation, np.array([x, y, height]))

    def _sync(self) -> None:
        pose = Pose.from_matrix(self._part)
        with self._lock:
            self._data.mocap_pos[self._part_mocap] = pose.position
            self._data.mocap_quat[self._part_mocap] = [pose.orientation[3], *pose.orientation[:3]]
            if self._attached:
                # Fingers stop at the card instead of closing through it.
                self._data.qpos[self._finger_qpos] = (
                    max(self._gap, self._width_across_fingers(self._tcp_matrix())) / 2.0
                )
            mujoco.mj_kinematics(self._model, self._data)
            mujoco.mj_camlight(self._model, self._data)

    # ---- privileged state --------------------------------------------------------------------

    @property
    def part_pose(self) -> Pose:
        """The card's centre pose."""
        return Pose.from_matrix(self._part)

    @property
    def attached(self) -> bool:
        """The card is held in the fingers."""
        return self._attached

    @property
    def slot(self) -> int | None:
        """The slot the card stands in, if any."""
        return self._slot

    @property
    def depth(self) -> float:
        """m of card edge inside its slot (0 when in none)."""
        return self._depth

    @property
    def upright(self) -> bool:
        """The card stands on its bottom edge (within 0.06 rad)."""
        return bool(self._part[2, 2] >= _UPRIGHT_COS)

    @property
    def on_table(self) -> bool:
        """The card rests on the table top itself (not the board, not the floor), released."""
        return (
            not self._attached
            and self._slot is None
            and self._support(self._part[0, 3], self._part[1, 3]) == 0.0
            and abs(self._bottom(self._part)) < 1e-6
        )

    def signals(self) -> StageSignals:
        """The privileged success of every stage in the current state."""
        in_slot3 = self._slot == 3 and self._depth >= PARTIAL_DEPTH - _EPS
        home = (
            self.on_table
            and self.upright
            and math.hypot(self._part[0, 3] - HOME[0], self._part[1, 3] - HOME[1]) <= HOME_RADIUS
            and _half_turn_distance(_yaw(self._part[:3, :3]), HOME_YAW) <= HOME_YAW_TOLERANCE
        )
        return StageSignals(
            inserted_slot1=self._slot == 1 and self._depth >= PARTIAL_DEPTH - _EPS,
            at_slot3=in_slot3 and self._depth < FULL_DEPTH - _EPS,
            pressed_slot3=in_slot3 and self._depth >= FULL_DEPTH - _EPS,
            home=home,
        )

    # ---- scene changes -----------------------------------------------------------------------

    def reset_scene(self, randomize: bool = True, seed: int | None = None) -> Pose:
        """Put the card back in its home area, released, and return its pose; the arm is left
        where it is (that is the backend's move_joints).

        ``randomize`` shifts it up to 1.5 cm and turns it up to 0.15 rad (with ``seed`` if given,
        from the world's own seeded sequence otherwise); without it, it goes to the area's centre.
        """
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        offset = rng.uniform(-0.015, 0.015, 2) if randomize else np.zeros(2)
        yaw = HOME_YAW + (float(rng.uniform(-0.15, 0.15)) if randomize else 0.0)
        self.place(HOME[0] + float(offset[0]), HOME[1] + float(offset[1]), yaw)
        return self.part_pose

    def place(self, x: float, y: float, yaw: float) -> None:
        """Stand the card upright and released on whatever is under (x, y), out of any slot (to
        set up a situation; see :meth:`insert` for a slot)."""
        self._attached = False
        self._slot = None
        self._depth = 0.0
        self._part = _transform(_rot_z(yaw), np.array([x, y, self._support(x, y) + CARD_HALF[2]]))
        self._sync()

    def insert(self, slot: int, depth: float = PARTIAL_DEPTH) -> None:
        """Stand the card in a slot (released) at a depth between the latch and fully home."""
        if slot not in SLOTS or not PARTIAL_DEPTH <= depth <= FULL_DEPTH:
            raise ValueError(f"no slot {slot} or depth {depth} outside [{PARTIAL_DEPTH}, {FULL_DEPTH}]")
        self._attached = False
        self._part = _transform(_rot_z(math.pi / 2), self._part[:3, 3])
        self._seat(slot, depth)
        self._sync()

    def drop_part(self) -> bool:
        """Failure injection: the fingers lose the card, which falls (see :meth:`_settle`).

        Returns whether it was held."""
        if not self._attached:
            return False
        self._attached = False
        self._settle()
        self._sync()
        return True

    def knock_part(self, offset: tuple[float, float] | None = None) -> None:
        """Failure injection: something knocks the card over, out of the fingers or its slot, and
        moves it by ``offset`` (x, y; random within 10 cm by default). It ends up lying on its
        side, off the table if pushed past the edge."""
        shift = self._rng.uniform(-0.1, 0.1, 2) if offset is None else np.asarray(offset, dtype=np.float64)
        self._attached = False
        self._slot = None
        self._depth = 0.0
        # Tipped over about its length: the broad face ends up underneath.
        tipped = self._part[:3, :3] @ np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        self._part = _transform(tipped, self._part[:3, 3] + np.array([shift[0], shift[1], 0.0]))
        self._settle()
        self._sync()

    # ---- cameras -----------------------------------------------------------------------------

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self._camera_ids)

    def intrinsics(self, camera: str) -> tuple[float, float, float, float]:
        """fx, fy, cx, cy in pixels of a camera's rendered image (pinhole, no distortion).

        MuJoCo draws square pixels with a symmetric frustum of vertical angle fovy; the principal
        point follows the ROS / OpenCV convention that pixel centres sit at integer coordinates.
        """
        fovy = math.radians(float(self._model.cam_fovy[self._camera_ids[camera]]))
        focal = self.height / 2.0 / math.tan(fovy / 2.0)
        return (focal, focal, (self.width - 1) / 2.0, (self.height - 1) / 2.0)

    def camera_pose(self, camera: str) -> Pose:
        """The camera's optical frame (REP-103: z forward, x right, y down) in the base frame."""
        index = self._camera_ids[camera]
        # MuJoCo's camera frame looks along -z with y up: half a turn about x gives the optical frame.
        rotation = self._data.cam_xmat[index].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
        return Pose.from_matrix(_transform(rotation, self._data.cam_xpos[index].copy()))

    def render(self, camera: str) -> Image:
        """An RGB image (height x width x 3, uint8) from a camera, of the state at the last update.

        The first call makes the OpenGL context, which then belongs to the calling thread."""
        index = self._camera_ids[camera]
        with self._lock:
            if self._renderer is None:
                self._renderer = _Renderer(self._model, self.width, self.height)
                self._render_thread = threading.get_ident()
            elif self._render_thread != threading.get_ident():
                raise RuntimeError("render() must be called from the thread that rendered first")
            return self._renderer.render(self._model, self._data, index)

    def close(self) -> None:
        """Free the renderer (from the thread that rendered); safe to call twice."""
        with self._lock:
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = None
            self._render_thread = None
