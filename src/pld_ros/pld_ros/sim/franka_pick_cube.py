"""The simulated twin of franka_pick_cube: an FR3 on a table, a cube to lift, a wrist and a side camera.

franky-sim provides the arm: MuJoCo physics of an FR3 with its gripper behind a libfranka-protocol
server, so the arm driver talks to it through franky exactly as to the real robot. This world adds
the task around it and never moves the arm itself:

* a table whose top is the robot's mounting plane (z = 0 in ``fr3_link0``, as on the real setup),
* a 4 cm cube on a free joint, placed by :meth:`FrankaPickCubeWorld.reset_scene` within
  :data:`CUBE_AREA` (in front of the robot, well inside the FR3's reach and the profile's
  workspace box),
* a wrist camera in the hand body looking along the gripper, and a side camera on the table edge,
  rendered offscreen on request,
* the privileged success signal: the cube's centre is at least 4 cm above its resting height.

Frames: MuJoCo's world frame is the robot's base frame (``fr3_link0``); poses returned here are in
it. Physics runs in a thread of its own, one franky-sim server tick (1 ms of simulated time) at a
time; every read or write of the MuJoCo state here holds the lock that thread holds while stepping.
"""

from __future__ import annotations

import math
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from types import TracebackType

import franky_sim.franka_robot_server
import mujoco
import numpy as np
import pinocchio
from franky_sim import SimulationServer
from franky_sim.mujoco_simulator import MujocoSimulator
from numpy.typing import NDArray

from pld_ros.core.spatial import FloatArray, Pose, quat_from_matrix

Vector3 = tuple[float, float, float]
Image = NDArray[np.uint8]

HOME_JOINTS = (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)
"""The FR3's usual ready pose; the arm starts here unless told otherwise."""
CUBE_HALF_SIZE = 0.02
"""m: the cube's edge is 4 cm, half the gripper's opening."""
CUBE_MASS = 0.05
"""kg: a 4 cm wooden cube."""
TABLE_HEIGHT = 0.75
"""m from the floor to the table top (the robot's mounting plane)."""
LIFT_THRESHOLD = 0.04
"""m the cube's centre must rise above its resting height to count as lifted."""
PHYSICS_STEP = 0.001
"""s of simulated time per physics step (franky-sim's 1 kHz libfranka cycle)."""
MAX_LAG = 0.02
"""s the physics may run behind its schedule; beyond that it forgets the backlog instead of sprinting."""
PHYSICS_THREAD = "franka_pick_cube physics"
"""Name of the thread that steps the physics."""


@dataclass(frozen=True)
class CubeArea:
    """Where :meth:`FrankaPickCubeWorld.reset_scene` puts the cube: uniform ranges, base frame."""

    x: tuple[float, float] = (0.40, 0.60)
    """m, the cube centre's forward distance from the robot base."""
    y: tuple[float, float] = (-0.15, 0.15)
    """m, its lateral offset."""
    yaw: tuple[float, float] = (-math.pi / 4, math.pi / 4)
    """rad about z; a cube looks the same every quarter turn, so this covers every heading."""

    def sample(self, rng: np.random.Generator) -> tuple[float, float, float]:
        """x, y, yaw drawn uniformly."""
        return (float(rng.uniform(*self.x)), float(rng.uniform(*self.y)), float(rng.uniform(*self.yaw)))

    @property
    def centre(self) -> tuple[float, float, float]:
        """x, y, yaw of the layout used when the scene is reset without randomization."""
        return (sum(self.x) / 2, sum(self.y) / 2, 0.0)


CUBE_AREA = CubeArea()


@dataclass(frozen=True)
class CameraMount:
    """A rendered camera: where it sits (MuJoCo convention: looks along -z, y up) and its field of view."""

    body: str
    """Body it is fixed to; "" for the world."""
    position: Vector3
    """m, in that body's frame."""
    xyaxes: tuple[float, float, float, float, float, float]
    """The camera's x (image right) and y (image up) axes in that body's frame."""
    fovy: float
    """Vertical field of view, degrees."""


def _look_at(eye: Vector3, target: Vector3) -> tuple[float, float, float, float, float, float]:
    forward = np.subtract(target, eye) / np.linalg.norm(np.subtract(target, eye))
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    x0, x1, x2 = (float(v) for v in right)
    y0, y1, y2 = (float(v) for v in up)
    return (x0, x1, x2, y0, y1, y2)


# The wrist camera's tilt towards the gripper axis: it centres the space just below the fingertips.
_WRIST_TILT = 0.25

CAMERAS: dict[str, CameraMount] = {
    # A RealSense D405 on the hand, 6 cm off the gripper axis on the side away from the fingers'
    # travel, so both fingertips show at the top of the image. Vertical FOV of the D405 (58°):
    # the square render is the centred square crop of its 4:3 image that the profile takes.
    "wrist": CameraMount(
        body="robot0_hand",
        position=(0.06, 0.0, 0.03),
        xyaxes=(0.0, -1.0, 0.0, -math.cos(_WRIST_TILT), 0.0, -math.sin(_WRIST_TILT)),
        fovy=58.0,
    ),
    # A D435 (colour vertical FOV 42°) in front of the table's right corner: it sees the cube area,
    # the arm's lower half and the gripper from the table up to its ready pose.
    "side": CameraMount(
        body="",
        position=(1.35, -0.6, 0.55),
        xyaxes=_look_at((1.35, -0.6, 0.55), (0.45, 0.0, 0.2)),
        fovy=42.0,
    ),
}
"""The world's cameras by name (the profile's camera names)."""


class _ColumnMajorQuaternionPinocchio:
    """pinocchio as franky-sim's robot server uses it, without a leak in its one call.

    eigenpy 3.13 (under pinocchio 4.1) leaks 80 bytes, a copy of the matrix, every time
    ``pinocchio.Quaternion`` is built from a 3x3 array it cannot map in place as a column-major
    Eigen matrix. The server builds one from a strided view of each Cartesian command, once per
    1 ms physics tick: some 290 MB an hour of a process's heap (the soak's sim_world grew 198 MB/h).
    A column-major copy is mapped in place and leaks nothing.
    """

    def __getattr__(self, name: str) -> object:
        return getattr(pinocchio, name)

    @staticmethod
    def Quaternion(*args: object) -> object:  # noqa: N802  # pinocchio's name, looked up by the server
        if len(args) == 1 and isinstance(args[0], np.ndarray) and args[0].shape == (3, 3):
            return pinocchio.Quaternion(np.asfortranarray(args[0]))
        return pinocchio.Quaternion(*args)


# The server's module holds pinocchio as its global ``pin`` and uses it for this call only.
franky_sim.franka_robot_server.pin = _ColumnMajorQuaternionPinocchio()


class _LockedMujocoSimulator(MujocoSimulator):  # type: ignore[misc]  # franky_sim has no types
    """franky-sim's MuJoCo simulator whose physics step holds :attr:`lock`.

    The physics thread calls :meth:`step` once per 1 ms tick; the rest of its tick (network I/O,
    sleeping) runs without the lock, so other threads wait at most one step.

    Each step also keeps the hand's fingers within their joint range. MuJoCo's joint limits are
    soft: a violent arm motion (franky-sim's commanded velocities jump when its physics steps
    irregularly under load) can push closed fingers a few millimetres past their stop, where the two
    fingers' meshes interpenetrate and lock for good (measured: 4 mm past the stop stays shut against
    a full-force open, 2.5 mm frees itself). A real hand's fingers cannot pass their mechanical stop.
    """

    def __init__(self) -> None:
        super().__init__(enable_visualization=False)
        self.lock = threading.Lock()
        self._finger_limits: list[tuple[int, int, float, float]] = []
        """(qpos address, dof address, lower, upper limit) of each finger joint."""

    def bound_fingers(self) -> None:
        """Find the finger joints and their ranges; call once the model is built."""
        model = self.model
        self._finger_limits = [
            (
                int(model.jnt_qposadr[j]),
                int(model.jnt_dofadr[j]),
                float(model.jnt_range[j][0]),
                float(model.jnt_range[j][1]),
            )
            for j in range(model.njnt)
            if "finger_joint" in model.joint(j).name
        ]

    def step(self) -> None:
        with self.lock:
            super().step()
            qpos, qvel = self.data.qpos, self.data.qvel
            for q, v, low, high in self._finger_limits:
                if qpos[q] < low:
                    qpos[q], qvel[v] = low, max(float(qvel[v]), 0.0)
                elif qpos[q] > high:
                    qpos[q], qvel[v] = high, min(float(qvel[v]), 0.0)


class FrankaPickCubeWorld:
    """The world, with franky-sim's server bound to ``host`` while started.

    ``host`` must be a local address free on the libfranka ports (1337, 1338), e.g. a 127.0.0.x
    loopback address. ``real_time_factor`` is the target pace of the physics (1.0: real time; it
    runs slower when the machine cannot keep up, see :meth:`real_time_factor`). Images are rendered
    at ``render_width`` x ``render_height``; ``detailed_arm`` draws the arm with its full visual
    meshes (about 240k triangles, five times slower to render on a CPU) instead of its collision
    meshes (the hand and fingers stay detailed either way).
    """

    def __init__(
        self,
        host: str,
        *,
        render_width: int = 128,
        render_height: int = 128,
        real_time_factor: float = 1.0,
        seed: int = 0,
        initial_joints: tuple[float, ...] = HOME_JOINTS,
        cube_area: CubeArea = CUBE_AREA,
        detailed_arm: bool = False,
    ) -> None:
        if render_width <= 0 or render_height <= 0:
            raise ValueError(f"render size must be positive, got {render_width}x{render_height}")
        if not real_time_factor > 0.0:
            raise ValueError(f"real_time_factor must be positive, got {real_time_factor}")
        if len(initial_joints) != 7:
            raise ValueError(f"an FR3 has 7 joints, got {len(initial_joints)} initial positions")
        self.host = host
        self.width = render_width
        self.height = render_height
        self.target_real_time_factor = real_time_factor
        self.cube_area = cube_area
        self._initial_joints = tuple(initial_joints)
        self._detailed_arm = detailed_arm
        self._rng = np.random.default_rng(seed)
        self._sim: _LockedMujocoSimulator | None = None
        self._server: SimulationServer | None = None
        self._physics: threading.Thread | None = None
        self._stopping = threading.Event()
        self._renderer: mujoco.Renderer | None = None
        self._render_thread: int | None = None
        self._render_lock = threading.Lock()
        self._cube_qpos = self._cube_dof = 0  # addresses of the cube's free joint once started
        self._pace = (0.0, 0.0)  # wall clock, sim time at the last real_time_factor() call

    # ----------------------------------------------------------------------------------------
    # Lifecycle
    # ----------------------------------------------------------------------------------------

    def start(self) -> FrankaPickCubeWorld:
        """Build the scene, bind the server, place the cube (randomized) and start the physics."""
        if self._server is not None:
            raise RuntimeError("the world is already started")
        sim = _LockedMujocoSimulator()
        sim.init()
        sim.add_robot(initial_q=self._initial_joints, initial_hand_width=0.08)
        self._extend_scene(sim)
        server = SimulationServer(sim, hostname_candidates=[self.host])
        try:
            server.init()
        except OSError as exc:
            server.cleanup()
            sim.cleanup()
            raise OSError(
                f"cannot bind franky-sim to {self.host} (ports 1337, 1338): {exc}; "
                "is another simulator or robot using this address?"
            ) from exc
        sim.bound_fingers()
        self._sim, self._server = sim, server
        self._cube_qpos = int(sim.model.jnt_qposadr[sim.model.joint("cube_joint").id])
        self._cube_dof = int(sim.model.jnt_dofadr[sim.model.joint("cube_joint").id])
        self.reset_scene(randomize=True)
        self._stopping.clear()
        self._physics = threading.Thread(
            target=self._run_physics, args=(server,), name=PHYSICS_THREAD, daemon=True
        )
        self._pace = (time.monotonic(), float(sim.data.time))
        self._physics.start()
        return self

    def _run_physics(self, server: SimulationServer) -> None:
        # franky-sim's own loop sleeps a fixed 1 ms minus each step's duration, so every step that
        # takes longer is lost for good and the pace falls below what the CPU allows. Absolute
        # deadlines make up for slow steps with the next fast ones.
        period = PHYSICS_STEP / self.target_real_time_factor
        deadline = time.monotonic()
        while not self._stopping.is_set():
            server.run_once(realtime=False)
            deadline = max(deadline + period, time.monotonic() - MAX_LAG)
            delay = deadline - time.monotonic()
            if delay > 0.0:
                time.sleep(delay)

    def stop(self) -> None:
        """Stop the physics, close the server's ports and free the renderer. Safe to call twice."""
        server, sim, self._server, self._sim = self._server, self._sim, None, None
        physics, self._physics = self._physics, None
        if physics is not None:
            self._stopping.set()
            physics.join()
        if server is not None:
            server.cleanup()
        if sim is not None:
            sim.cleanup()
        with self._render_lock:
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = None
            self._render_thread = None

    def __enter__(self) -> FrankaPickCubeWorld:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def physics_alive(self) -> bool:
        """Whether the physics thread is running (it dies with an exception, e.g. a MuJoCo error)."""
        return self._physics is not None and self._physics.is_alive()

    # ----------------------------------------------------------------------------------------
    # Scene
    # ----------------------------------------------------------------------------------------

    def _extend_scene(self, sim: _LockedMujocoSimulator) -> None:
        visual = sim.scene.find("visual")
        # Shadows and multisampling cost most of the CPU render time and a 128 px policy view
        # gains little from them; the offscreen buffer only needs the render size.
        quality = visual.find("quality")
        quality.set("shadowsize", "0")
        quality.set("offsamples", "0")
        ET.SubElement(visual, "global", offwidth=str(self.width), offheight=str(self.height))
        asset = sim.scene.find("asset")
        ET.SubElement(asset, "material", name="table", rgba="0.66 0.53 0.40 1", specular="0.1")
        ET.SubElement(asset, "material", name="cube", rgba="0.85 0.12 0.08 1", specular="0.2")

        world = sim.worldbody
        for geom in world.findall("geom"):
            if geom.get("name") == "ground":
                geom.set("pos", f"0 0 {-TABLE_HEIGHT}")
        half = TABLE_HEIGHT / 2
        ET.SubElement(
            world,
            "geom",
            name="table",
            type="box",
            pos=f"0.35 0 {-half}",
            size=f"0.6 0.6 {half}",
            material="table",
        )
        x, y, _ = self.cube_area.centre
        cube = ET.SubElement(world, "body", name="cube", pos=f"{x} {y} {CUBE_HALF_SIZE}")
        ET.SubElement(cube, "freejoint", name="cube_joint")
        ET.SubElement(
            cube,
            "geom",
            name="cube",
            type="box",
            size=" ".join([str(CUBE_HALF_SIZE)] * 3),
            mass=str(CUBE_MASS),
            material="cube",
        )

        bodies = {body.get("name"): body for body in world.iter("body")}
        for name, mount in CAMERAS.items():
            parent = bodies[mount.body] if mount.body else world
            ET.SubElement(
                parent,
                "camera",
                name=name,
                pos=" ".join(str(v) for v in mount.position),
                xyaxes=" ".join(str(v) for v in mount.xyaxes),
                fovy=str(mount.fovy),
            )
        if not self._detailed_arm:
            for index in range(8):
                self._draw_collision_mesh(bodies[f"robot0_fr3_link{index}"])

    @staticmethod
    def _draw_collision_mesh(body: ET.Element) -> None:
        # The collision meshes (200-400 triangles a link) stand in for the visual ones (up to 100k).
        for geom in body.findall("geom"):
            if geom.get("class") == "visual":
                body.remove(geom)
            elif geom.get("class") == "collision":
                ET.SubElement(
                    body,
                    "geom",
                    attrib={"class": "visual", "mesh": geom.get("mesh", ""), "material": "white"},
                )

    def _started(self) -> _LockedMujocoSimulator:
        if self._sim is None:
            raise RuntimeError("the world is not started")
        return self._sim

    def cube_pose(self) -> Pose:
        """The cube's pose in the base frame."""
        sim = self._started()
        with sim.lock:
            qpos = np.array(sim.data.qpos[self._cube_qpos : self._cube_qpos + 7])
        w, x, y, z = qpos[3:]
        return Pose.of(qpos[:3], (x, y, z, w))

    def set_cube_pose(self, pose: Pose) -> None:
        """Teleport the cube to ``pose`` (base frame), at rest."""
        sim = self._started()
        x, y, z, w = pose.orientation
        with sim.lock:
            sim.data.qpos[self._cube_qpos : self._cube_qpos + 7] = [*pose.position, w, x, y, z]
            sim.data.qvel[self._cube_dof : self._cube_dof + 6] = 0.0

    def cube_lift(self) -> float:
        """m the cube's centre is above its resting height on the table."""
        return float(self.cube_pose().position[2]) - CUBE_HALF_SIZE

    def privileged_success(self) -> bool:
        """The task is done: the cube is lifted by :data:`LIFT_THRESHOLD` or more."""
        return self.cube_lift() >= LIFT_THRESHOLD

    def reset_scene(self, randomize: bool = True, seed: int | None = None) -> Pose:
        """Put the cube back on the table and return its pose; the arm is left where it is.

        ``randomize`` draws the layout from :attr:`cube_area` (with ``seed`` if given, from the
        world's own seeded sequence otherwise); without it the cube goes to the area's centre.
        """
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        x, y, yaw = self.cube_area.sample(rng) if randomize else self.cube_area.centre
        pose = Pose.of((x, y, CUBE_HALF_SIZE), (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)))
        self.set_cube_pose(pose)
        return pose

    def real_time_factor(self) -> float:
        """Simulated seconds per wall-clock second since the previous call (or since start)."""
        sim = self._started()
        now, sim_time = time.monotonic(), float(sim.data.time)
        last_now, last_sim_time = self._pace
        self._pace = (now, sim_time)
        return (sim_time - last_sim_time) / max(now - last_now, 1e-9)

    # ----------------------------------------------------------------------------------------
    # Cameras
    # ----------------------------------------------------------------------------------------

    def render(self, camera: str) -> Image:
        """A fresh ``height x width x 3`` RGB frame of ``camera``.

        The first call creates the OpenGL context, which then belongs to the calling thread:
        render from that thread only.
        """
        if camera not in CAMERAS:
            raise KeyError(f"no camera {camera!r} in this world (cameras: {', '.join(CAMERAS)})")
        sim = self._started()
        with self._render_lock:
            if self._renderer is None:
                self._renderer = mujoco.Renderer(sim.model, self.height, self.width)
                self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
                self._render_thread = threading.get_ident()
            elif self._render_thread != threading.get_ident():
                raise RuntimeError("render() must be called from the thread that rendered first")
            # Only the scene snapshot needs the physics lock; drawing it (the costly part) does not.
            with sim.lock:
                self._renderer.update_scene(sim.data, camera=camera)
            frame: Image = self._renderer.render()
            return frame

    def intrinsics(self, camera: str) -> tuple[float, float, float, float]:
        """fx, fy, cx, cy in pixels of ``camera``'s rendered image (pinhole, no distortion).

        MuJoCo draws square pixels with a symmetric frustum of vertical angle fovy; the principal
        point follows the ROS / OpenCV convention that pixel centres sit at integer coordinates.
        """
        if camera not in CAMERAS:
            raise KeyError(f"no camera {camera!r} in this world (cameras: {', '.join(CAMERAS)})")
        focal = (self.height / 2.0) / math.tan(math.radians(CAMERAS[camera].fovy) / 2.0)
        return (focal, focal, (self.width - 1) / 2.0, (self.height - 1) / 2.0)

    def camera_pose(self, camera: str) -> Pose:
        """Pose of ``camera``'s optical frame (z forward, x right, y down; REP-103) in the base frame."""
        sim = self._started()
        with sim.lock:
            camera_id = sim.model.camera(camera).id
            position = np.array(sim.data.cam_xpos[camera_id])
            axes: FloatArray = np.array(sim.data.cam_xmat[camera_id]).reshape(3, 3)
        # MuJoCo cameras look along -z with y up; the optical frame flips y and z.
        return Pose.of(position, quat_from_matrix(axes @ np.diag([1.0, -1.0, -1.0])))
