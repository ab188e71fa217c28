"""A scripted expert for the four stages of yam_gpu_insertion, on the simulated world's privileged state.

It acts like a policy: every 20 Hz tick it reads the TCP pose and gripper closure the arm reports
and answers one end-effector delta (translation m, axis-angle rad, base frame) and an absolute
gripper closure, kept within the profile's step limits. It decides from where the card is, not
from a fixed script, so it carries on after an injected drop (it picks the card up again) and
across stage boundaries from wherever the previous stage left the arm:

* ``insert_slot1`` / ``move_to_slot3``: pick the card up (if not held), lift it clear of the
  connectors, carry it above the slot and lower it in until the latch stops it.
* ``press_slot3``: let go, close the fingers above the card and push its top edge down until it is
  seated.
* ``unplug_return``: pick the card out of the slot, carry it to its home area and let go above the
  table.

Once a stage's signal holds it keeps the arm still (or backs off upwards after pressing and after
letting go at home). A card lying on its side or on the floor cannot be picked by a top-down grasp:
the expert then holds still and reports :attr:`YamGpuInsertionExpert.stuck`, and a scene reset is
needed.
"""

from __future__ import annotations

import math

import numpy as np

from pld_ros.core.safety import DeltaCommand
from pld_ros.core.spatial import FloatArray, Pose, quat_from_matrix, quat_from_rotvec, rotation_angle_between
from pld_ros.sim.yam_gpu_insertion import (
    CARD_HALF,
    FULL_DEPTH,
    HOME,
    HOME_YAW,
    PARTIAL_DEPTH,
    SLOT_TOP,
    SLOTS,
    STAGES,
    YamGpuInsertionWorld,
)

GRASP_DEPTH = 0.015
"""m below the card's top edge where the fingertips close (the pads then hold its top 1.5 cm)."""
APPROACH = 0.05
"""m above a grasp from where the gripper descends onto the card."""
CLEARANCE = 0.04
"""m between the card's bottom edge and the connector tops while it is carried."""
RELEASE_HEIGHT = 0.003
"""m above the table at which the card is let go at home."""
OVERTRAVEL = 0.002
"""m below where the card stops that the expert aims, so it reaches the stop despite rounding."""

_DESTINATIONS = {"insert_slot1": 1, "move_to_slot3": 3, "press_slot3": 3, "unplug_return": None}
_OPEN = 0.0
_CLOSED = 1.0


def _upright(position: FloatArray, heading: float) -> FloatArray:
    """4x4 pose of the card standing at a position with its length along a heading."""
    return Pose(position, quat_from_rotvec(np.array([0.0, 0.0, heading]))).matrix()


class YamGpuInsertionExpert:
    """Privileged scripted policy for one world; call :meth:`act` once per control tick."""

    def __init__(
        self,
        world: YamGpuInsertionWorld,
        *,
        max_translation: float = 0.012,
        max_rotation: float = 0.06,
        tolerance: float = 0.002,
        angle_tolerance: float = 0.03,
    ) -> None:
        """Steps are capped at ``max_translation`` (m) and ``max_rotation`` (rad) per tick (keep them
        below the profile's safety limits); a waypoint counts as reached within ``tolerance`` (m)
        and ``angle_tolerance`` (rad)."""
        self._world = world
        self._max_translation = max_translation
        self._max_rotation = max_rotation
        self._tolerance = tolerance
        self._angle_tolerance = angle_tolerance

    @property
    def stuck(self) -> bool:
        """The card lies where a top-down grasp cannot take it (on its side, or on the floor)."""
        world = self._world
        return not world.attached and (not world.upright or world.part_pose.position[2] < 0.0)

    def act(self, stage: str, tcp: Pose, gripper_closure: float) -> DeltaCommand:
        """The delta for this tick in ``stage`` (a profile stage name), from the measured TCP pose
        and gripper closure."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        world = self._world
        if world.signals().of(stage):
            target, gripper = self._after(stage, tcp, gripper_closure)
        elif self.stuck:
            target, gripper = tcp.matrix(), gripper_closure
        elif stage == "press_slot3" and world.slot == 3:
            target, gripper = self._press(tcp, gripper_closure)
        elif not world.attached:
            target, gripper = self._pick(tcp, gripper_closure)
        else:
            target, gripper = self._carry(_DESTINATIONS[stage], tcp)
        return self._toward(tcp, target, gripper)

    # ---- behaviours --------------------------------------------------------------------------

    def _after(self, stage: str, tcp: Pose, closure: float) -> tuple[FloatArray, float]:
        """Once a stage is done: keep still, or back off upwards where the fingers let go."""
        if stage in ("press_slot3", "unplug_return"):
            top = self._card()[2, 3] + CARD_HALF[2]
            target = tcp.matrix()
            target[2, 3] = max(target[2, 3], top + APPROACH)
            return target, _CLOSED if stage == "press_slot3" else _OPEN
        return tcp.matrix(), closure

    def _pick(self, tcp: Pose, closure: float) -> tuple[FloatArray, float]:
        grasp = self._grasp_pose(tcp)
        above = grasp.copy()
        above[2, 3] += APPROACH
        lateral = float(np.linalg.norm(tcp.position[:2] - grasp[:2, 3]))
        angle = rotation_angle_between(tcp.orientation, Pose.from_matrix(grasp).orientation)
        if lateral > self._tolerance or angle > self._angle_tolerance:
            if tcp.position[2] < above[2, 3] - self._tolerance and lateral > 0.01:
                # Rise before travelling, so the fingers do not sweep through the card or board.
                rise = above.copy()
                rise[:2, 3] = tcp.position[:2]
                return rise, _OPEN
            return above, _OPEN
        at_grasp = tcp.position[2] <= grasp[2, 3] + self._tolerance
        if at_grasp and closure > 0.5:
            # Closed at the card without holding it: back up and try again.
            return above, _OPEN
        if not at_grasp:
            # Descend only with the fingers open, or they would land on the card.
            return (grasp if closure < 0.1 else tcp.matrix()), _OPEN
        return grasp, _CLOSED

    def _carry(self, slot: int | None, tcp: Pose) -> tuple[FloatArray, float]:
        world = self._world
        card = self._card()
        held = np.linalg.inv(tcp.matrix()) @ card
        carry_height = SLOT_TOP + CLEARANCE + CARD_HALF[2]
        yaw = math.atan2(card[1, 0], card[0, 0])
        if slot is None:
            heading = HOME_YAW if math.cos(yaw - HOME_YAW) >= 0.0 else HOME_YAW - math.pi
            goal = _upright(np.array([*HOME, CARD_HALF[2] + RELEASE_HEIGHT]), heading)
        else:
            heading = math.copysign(math.pi / 2, math.sin(yaw))
            depth = PARTIAL_DEPTH + OVERTRAVEL
            goal = _upright(np.array([*SLOTS[slot], SLOT_TOP - depth + CARD_HALF[2]]), heading)
        off_course = float(np.linalg.norm(card[:2, 3] - goal[:2, 3])) > self._tolerance or (
            rotation_angle_between(Pose.from_matrix(card).orientation, Pose.from_matrix(goal).orientation)
            > self._angle_tolerance
        )
        if (world.slot is not None and world.slot != slot) or (
            off_course and card[2, 3] < carry_height - self._tolerance
        ):
            # Straight up first: out of the slot's guide, clear of the connectors.
            lifted = card.copy()
            lifted[2, 3] = carry_height
            return lifted @ np.linalg.inv(held), _CLOSED
        if off_course:
            travel = goal.copy()
            travel[2, 3] = carry_height
            return travel @ np.linalg.inv(held), _CLOSED
        if slot is None and card[2, 3] <= goal[2, 3] + self._tolerance:
            return tcp.matrix(), _OPEN
        return goal @ np.linalg.inv(held), _CLOSED

    def _press(self, tcp: Pose, closure: float) -> tuple[FloatArray, float]:
        if self._world.attached:
            return tcp.matrix(), _OPEN
        card = self._card()
        top = card[2, 3] + CARD_HALF[2]
        above = self._grasp_pose(tcp)
        above[2, 3] = top + 0.02
        if closure < 0.95:
            # Close above the card's top edge, not around it (that would grasp it).
            if tcp.position[2] < top + 0.01:
                return above, _OPEN
            return tcp.matrix(), _CLOSED
        if float(np.linalg.norm(tcp.position[:2] - card[:2, 3])) > self._tolerance:
            return above, _CLOSED
        seated_top = SLOT_TOP - FULL_DEPTH + 2 * CARD_HALF[2]
        push = above.copy()
        push[2, 3] = seated_top - OVERTRAVEL
        return push, _CLOSED

    # ---- geometry ----------------------------------------------------------------------------

    def _card(self) -> FloatArray:
        return self._world.part_pose.matrix()

    def _grasp_pose(self, tcp: Pose) -> FloatArray:
        """Top-down TCP pose closing the fingers across the card's thickness, 1.5 cm below its
        top, turned whichever way round is nearer the current TCP orientation."""
        card = self._card()
        across = np.array([card[0, 1], card[1, 1], 0.0])
        across /= np.linalg.norm(across)
        down = np.array([0.0, 0.0, -1.0])
        position = card[:3, 3] + np.array([0.0, 0.0, CARD_HALF[2] - GRASP_DEPTH])
        candidates = [
            Pose(position, quat_from_matrix(np.column_stack([np.cross(y, down), y, down]))).matrix()
            for y in (across, -across)
        ]
        return min(
            candidates,
            key=lambda m: rotation_angle_between(tcp.orientation, Pose.from_matrix(m).orientation),
        )

    def _toward(self, tcp: Pose, target: FloatArray, gripper: float) -> DeltaCommand:
        translation, rotation = tcp.delta_to(Pose.from_matrix(target))
        for vector, limit in ((translation, self._max_translation), (rotation, self._max_rotation)):
            norm = float(np.linalg.norm(vector))
            if norm > limit:
                vector *= limit / norm
        return DeltaCommand(translation, rotation, gripper)
