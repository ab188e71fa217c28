"""The yam_gpu_insertion world as a graph runs it (ROS-free; the ``sim_world`` node hosts it).

:class:`YamGpuInsertionSession` wraps one :class:`YamGpuInsertionWorld` for a process in which
several threads touch it: the arm's state updates it, services reset it or inject faults, and an
openpi policy server asks the scripted expert for actions. It adds what the world alone does not
say:

* **lost parts**: :meth:`YamGpuInsertionSession.update` reports the card going from held to not
  held while the fingers did not open (torn out sideways, or any slip the rules produce; the
  :class:`PartDropDetector` on the measured closure), and
  :meth:`YamGpuInsertionSession.inject` reports the injected drop or knock it causes.
* **the stand-in base policy**: no VLA can run here, so the expert answers the base policy's
  requests (:meth:`YamGpuInsertionSession.answer`, the openpi protocol's request and answer
  dicts). The request's prompt picks the behaviour: the profile stage whose ``prompt`` (or, without
  one, the base policy's prompt) it is runs the expert of the world stage of the stage's classifier ``head``
  (:func:`expert_stage`), so a ``recover`` stage with head 3 puts the card
  back home as ``unplug_return`` does. An unknown prompt is an error answer, never a hold.

Chunks: row 0 is the expert's answer to the request's proprioception (measured TCP pose and
gripper closure, as a policy sees them). The expert is closed-loop, so the later rows replay it on
the TCP and gripper that the previous rows lead to (the simulated arm reaches a delta within the
tick), which is what it would answer as long as the card does not move under it: while the card
is not held and the gripper is not commanded to change. From the first row after which that no
longer holds (the card is held, or a row opens or closes the fingers) the chunk holds still with
that row's gripper, so a chunk run open-loop for several steps never acts on a world it cannot
predict; it only waits for the next request.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pld_ros.core.observation import ACTION_DIM, GRIPPER, PROPRIO_DIM, Float32Array, hold_action
from pld_ros.core.spatial import FloatArray, Pose
from pld_ros.profile import OpenpiKeys, Stage
from pld_ros.sim.yam_gpu_insertion import STAGES, StageSignals, YamGpuInsertionWorld
from pld_ros.sim.yam_gpu_insertion_expert import YamGpuInsertionExpert

FAULTS = ("drop", "knock", "stall")
"""Faults :meth:`YamGpuInsertionSession.inject` knows: the fingers lose the held card; the card is
knocked over (out of the fingers or its slot, moved up to 10 cm, onto its side); the stand-in
policy holds still for the rest of the stage it is working on (its prompt), so the stage times
out."""
GRIPPER_TOLERANCE = 0.01
"""Closure difference between a chunk row's gripper command and the closure it starts from below
which the row does not move the fingers (so later rows can still be predicted)."""
TIMING_WINDOW = 200
"""Answers over which the answer-time statistics are kept."""


class UnknownPromptError(LookupError):
    """A request's prompt names no stage of the profile."""


def expert_stage(stage: Stage) -> str:
    """The world behaviour that achieves a profile stage: the world stage its classifier head
    scores (``recover`` reads the head of unplug_return, so it puts the card back home)."""
    if stage.head >= len(STAGES):
        raise ValueError(f"stage {stage.name!r}: head {stage.head} is not a yam_gpu_insertion signal")
    return STAGES[stage.head]


class PartDropDetector:
    """Fires when the card leaves fingers that were not told to open: a drop (or a tear out of
    the fingers), not a release. Privileged: it knows whether the world has the card attached."""

    def __init__(self, open_margin: float = 0.05) -> None:
        """``open_margin``: a commanded closure this much below the one that held the card is an
        opening (a release), whatever happens to the card then."""
        self._open_margin = open_margin
        self._held = False
        self._grip = 0.0

    def update(self, attached: bool, commanded_gripper: float) -> str:
        """Once per tick, after the world moved; "" or the reason, once per drop."""
        dropped = self._held and not attached and commanded_gripper >= self._grip - self._open_margin
        self._grip = max(self._grip, commanded_gripper) if self._held and attached else commanded_gripper
        self._held = attached
        return "part dropped" if dropped else ""


def stage_behaviours(stages: Sequence[Stage], default_prompt: str) -> dict[str, str]:
    """Prompt -> world stage (:data:`STAGES`) of each profile stage: its ``prompt``, or without one
    the base policy's ``default_prompt`` (what the base policy node sends then), runs the behaviour
    of its head (:func:`expert_stage`).

    Raises ValueError naming the stage for a head beyond the world's signals, or for one prompt
    given to stages of different behaviours."""
    behaviours: dict[str, str] = {}
    owners: dict[str, str] = {}
    for index, stage in enumerate(stages):
        where = f"reward.stages[{index}]"
        try:
            behaviour = expert_stage(stage)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc} (heads 0-{len(STAGES) - 1}: {', '.join(STAGES)})") from None
        prompt = stage.prompt or default_prompt
        if behaviours.get(prompt, behaviour) != behaviour:
            raise ValueError(
                f"{where} ({stage.name}): prompt {prompt!r} is also stage {owners[prompt]!r}'s, which "
                "has another head: the stand-in policy could not tell them apart"
            )
        behaviours[prompt] = behaviour
        owners.setdefault(prompt, stage.name)
    return behaviours


def scores(signals: StageSignals) -> list[float]:
    """The signals as success probabilities, 1.0 or 0.0, indexed by classifier head."""
    return [1.0 if value else 0.0 for value in dataclasses.astuple(signals)]


def _where(world: YamGpuInsertionWorld) -> str:
    if world.slot is not None:
        return f"in slot {world.slot}, {world.depth * 1e3:.1f} mm deep"
    x, y, z = world.part_pose.position
    lying = "" if world.upright else ", on its side"
    return f"at x={x:.3f} y={y:.3f} z={z:.3f} m{lying}"


class YamGpuInsertionSession:
    """One world, thread-safe, with lost-part detection, fault injection and the expert as a policy.

    ``behaviours``: prompt -> world stage (:func:`stage_behaviours`); ``horizon``: rows per chunk
    (the profile's ``chunk_horizon``). :meth:`YamGpuInsertionWorld.render` is not wrapped: call it
    on the world, from one thread (the world guards its own rendering state).
    """

    def __init__(
        self,
        world: YamGpuInsertionWorld,
        behaviours: Mapping[str, str],
        *,
        horizon: int = 1,
        expert: YamGpuInsertionExpert | None = None,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {horizon}")
        unknown = sorted(set(behaviours.values()) - set(STAGES))
        if unknown:
            raise ValueError(f"behaviours {unknown} are not stages of the world ({', '.join(STAGES)})")
        self.world = world
        self.behaviours = dict(behaviours)
        self.horizon = horizon
        self.expert = expert if expert is not None else YamGpuInsertionExpert(world)
        self._lock = threading.Lock()
        self._detector = PartDropDetector()
        self._closure = 0.0
        self._answer_seconds: deque[float] = deque(maxlen=TIMING_WINDOW)
        self._prompt: str | None = None
        """The prompt of the latest request: the stage the policy works on."""
        self._stalled: str | None = None
        """The prompt the policy holds still for (an injected stall), until another one comes."""

    # ---- the world ---------------------------------------------------------------------------

    def update(self, joints: tuple[float, ...] | FloatArray, gripper_closure: float) -> str | None:
        """Put the arm where its state says; the reason if the card was lost in doing so."""
        with self._lock:
            world = self.world
            world.update(joints, gripper_closure)
            self._closure = gripper_closure
            reason = self._detector.update(world.attached, gripper_closure)
            return f"{reason} from the closed fingers: now {_where(world)}" if reason else None

    def _changed(self) -> None:
        # A scene change the session made itself: the detector learns of it here, so that the
        # next update does not report it again.
        self._detector.update(self.world.attached, self._closure)

    def signals(self) -> StageSignals:
        with self._lock:
            return self.world.signals()

    def reset_scene(self, randomize: bool = True, seed: int | None = None) -> Pose:
        """The card back home, released (:meth:`YamGpuInsertionWorld.reset_scene`); its pose."""
        with self._lock:
            pose = self.world.reset_scene(randomize=randomize, seed=seed)
            self._changed()
            return pose

    def inject(self, fault: str) -> tuple[bool, str]:
        """Inject a fault (:data:`FAULTS`): whether it happened, and what happened or why not."""
        with self._lock:
            world = self.world
            if fault == "drop":
                if not world.drop_part():
                    return False, "nothing to drop: the card is not held"
                message = f"injected drop: the card fell from the fingers, now {_where(world)}"
            elif fault == "knock":
                world.knock_part()
                message = f"injected knock: the card was knocked over, now {_where(world)}"
            elif fault == "stall":
                if self._prompt is None:
                    return False, "nothing to stall: the policy has not been asked yet"
                self._stalled = self._prompt
                return True, f"injected stall: the policy holds still while asked {self._prompt!r}"
            else:
                return False, f"unknown fault {fault!r}; known: {', '.join(FAULTS)}"
            self._changed()
            return True, message

    def status(self) -> dict[str, str]:
        """The privileged state for diagnostics: each stage's signal, the card, the answer times."""
        with self._lock:
            world = self.world
            values = {
                f"signal/{stage}": str(value)
                for stage, value in zip(STAGES, dataclasses.astuple(world.signals()), strict=True)
            }
            values.update(
                attached=str(world.attached),
                slot=str(world.slot or ""),
                depth_mm=f"{world.depth * 1e3:.1f}",
                stuck=str(self.expert.stuck),
            )
            times = np.array(self._answer_seconds) if self._answer_seconds else np.array([math.nan])
        values["policy_answer_p50_ms"] = f"{np.percentile(times, 50) * 1e3:.2f}"
        values["policy_answer_max_ms"] = f"{times.max() * 1e3:.2f}"
        return values

    # ---- the stand-in base policy ------------------------------------------------------------

    def chunk(self, prompt: str, tcp: Pose, gripper_closure: float) -> Float32Array:
        """``horizon`` x 7 actions for the stage the prompt names, from the measured TCP pose and
        gripper closure (see the module doc). Raises :class:`UnknownPromptError`."""
        behaviour = self.behaviours.get(prompt)
        if behaviour is None:
            known = ", ".join(repr(p) for p in self.behaviours)
            raise UnknownPromptError(f"unknown prompt {prompt!r}: the profile's stages answer to {known}")
        rows = np.empty((self.horizon, ACTION_DIM), dtype=np.float32)
        with self._lock:
            self._prompt = prompt
            if self._stalled is not None and self._stalled != prompt:
                self._stalled = None  # the stage ended (timed out): the next one is served again
            if self._stalled == prompt:
                rows[:] = hold_action(gripper_closure)
                return rows
            predictable = True
            closure = gripper_closure
            for row in range(self.horizon):
                if not predictable:
                    rows[row] = hold_action(float(rows[row - 1, GRIPPER]))
                    continue
                command = self.expert.act(behaviour, tcp, closure)
                rows[row, :3] = command.translation
                rows[row, 3:6] = command.rotation
                rows[row, GRIPPER] = command.gripper
                predictable = not self.world.attached and abs(command.gripper - closure) <= GRIPPER_TOLERANCE
                tcp = tcp.moved(command.translation, command.rotation)
                closure = command.gripper
        return rows

    def answer(self, request: Mapping[str, Any], keys: OpenpiKeys) -> dict[str, Any]:
        """An openpi request (keys as the profile names them) -> its answer ``{keys.actions: chunk}``.

        Raises ValueError for a request without a usable prompt or proprioception, and
        :class:`UnknownPromptError` for a prompt no stage has."""
        started = time.perf_counter()
        prompt = request.get(keys.prompt)
        if not isinstance(prompt, str):
            raise ValueError(f"the request has no prompt (a str) under {keys.prompt!r}")
        state = np.asarray(request.get(keys.state, ()), dtype=np.float64)
        if state.shape != (PROPRIO_DIM,) or not np.all(np.isfinite(state)):
            raise ValueError(
                f"the request's {keys.state!r} must be {PROPRIO_DIM} finite numbers (x y z qx qy qz qw "
                f"closure), got shape {state.shape}"
            )
        actions = self.chunk(prompt, Pose.of(state[:3], state[3:7]), float(state[7]))
        with self._lock:
            self._answer_seconds.append(time.perf_counter() - started)
        return {keys.actions: actions}
