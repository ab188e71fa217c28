"""Robot profiles: one YAML file per robot setup, validated before any node starts.

A profile is the single source of truth for a setup: the launch files, the ``pld`` command line
and every node read it through :func:`load_profile`. A simulated variant names its base profile
with ``extends:`` and overrides only what differs; mappings merge key by key, everything else
(lists included) is replaced whole.

Units follow REP-103: metres, radians, seconds. Poses are in the robot base frame.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

Vector3 = tuple[float, float, float]
UnitInterval = Annotated[float, Field(ge=0.0, le=1.0)]
# ROS names: letters, digits and underscores, not starting with a digit.
RosName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file, the field, the value and why."""


class _Section(BaseModel):
    # Unknown keys are rejected: a typo in a safety limit must not silently fall back to a default.
    # Defaults are validated too, so that a default path's "~" is expanded like a given one's.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


UserPath = Annotated[Path, AfterValidator(Path.expanduser)]
"""A path in which "~" stands for the user's home directory."""


# --------------------------------------------------------------------------------------------
# Arms
# --------------------------------------------------------------------------------------------


class SafetyLimits(_Section):
    """Limits applied to every command before it reaches an arm backend."""

    workspace_min: Vector3
    """Lower corner of the allowed end-effector box in the base frame, m."""
    workspace_max: Vector3
    """Upper corner of the allowed end-effector box in the base frame, m."""
    max_translation_step: PositiveFloat = 0.02
    """Largest translation per control tick, m (0.02 m at 20 Hz is 0.4 m/s)."""
    max_rotation_step: PositiveFloat = 0.1
    """Largest rotation per control tick, rad."""
    gripper_min: UnitInterval = 0.0
    """Smallest gripper closure a command may ask for (0 = fully open)."""
    gripper_max: UnitInterval = 1.0
    """Largest gripper closure a command may ask for (1 = fully closed)."""
    command_timeout_ticks: PositiveInt = 5
    """Ticks without a command after which the arm holds its last target."""

    @model_validator(mode="after")
    def _ordered(self) -> SafetyLimits:
        for axis, lo, hi in zip("xyz", self.workspace_min, self.workspace_max, strict=True):
            if lo >= hi:
                raise ValueError(f"workspace_min.{axis} ({lo}) must be below workspace_max.{axis} ({hi})")
        if self.gripper_min > self.gripper_max:
            raise ValueError("gripper_min must not exceed gripper_max")
        return self


class _Arm(_Section):
    safety: SafetyLimits
    recover_errors: bool = True
    """Recover automatically from a robot error (a reflex, a stopped motor chain) and resume from
    the measured pose."""
    control_priority: Annotated[int, Field(ge=0, le=99)] = 0
    """SCHED_FIFO priority of the arm driver's control thread (1-99); 0 leaves it as it is.
    Needs CAP_SYS_NICE or an rtprio limit. libfranka already raises the thread that talks to a
    Franka to SCHED_FIFO 99 whenever it may, so this matters for the YAM."""


class FrankyArm(_Arm):
    """A Franka FR3 or Panda driven through franky (libfranka)."""

    driver: Literal["franky"]
    model: Literal["fr3", "panda"] = "fr3"
    host: str = "172.16.0.2"
    """Robot (or franky-sim) address."""
    realtime: Literal["enforce", "ignore"] = "enforce"
    """libfranka real-time mode; "ignore" only where no RT kernel exists (simulation)."""
    relative_dynamics_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """Scales franky's velocity, acceleration and jerk limits."""
    home_joints: tuple[float, float, float, float, float, float, float] = (
        0.0,
        -0.785,
        0.0,
        -2.356,
        0.0,
        1.571,
        0.785,
    )
    """Joint configuration of the reset pose, rad."""
    gripper_speed: PositiveFloat = 0.05
    """Finger speed, m/s."""
    gripper_force: PositiveFloat = 20.0
    """Grasp force, N."""
    max_gripper_width: PositiveFloat = 0.08
    """Finger opening at closure 0, m."""
    gripper_timeout: PositiveFloat = 5.0
    """Seconds a hand command may go unanswered before it is given up and the hand commanded anew
    (a full stroke at the default speed takes 1.6 s)."""


class I2rtArm(_Arm):
    """An I2RT YAM arm driven through the i2rt driver (SocketCAN)."""

    driver: Literal["i2rt"]
    can_channel: str = "can0"
    gripper: Literal["linear_4310", "crank_4310", "linear_3507", "none"] = "linear_4310"
    home_joints: tuple[float, float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    """Joint configuration of the reset pose, rad."""
    ik_damping: PositiveFloat = 1e-3
    """Damping of the differential IK that turns pose deltas into joint targets."""


Arm = Annotated[FrankyArm | I2rtArm, Field(discriminator="driver")]


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------


class PolicyView(_Section):
    """How a camera image becomes a policy input: crop (full-resolution pixels), then resize."""

    width: PositiveInt = 128
    height: PositiveInt = 128
    crop: tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt] | None = None
    """x, y, width, height of the crop, or none for the whole image."""


class Camera(_Section):
    driver: Literal["realsense", "opencv", "sim"]
    serial: str | None = None
    """RealSense serial number; required for the realsense driver."""
    source: str | None = None
    """OpenCV device index or video file / stream URL; required for the opencv driver."""
    width: PositiveInt = 640
    height: PositiveInt = 480
    fps: PositiveInt = 30
    exposure_us: PositiveInt | None = None
    """Fixed exposure; none leaves auto-exposure on (avoid: it changes what the policy sees)."""
    frame_id: str = ""
    """Optical frame of the camera; defaults to "<name>_camera_optical_frame"."""
    stale_after: PositiveFloat = 0.5
    """Seconds without a frame after which the camera counts as stale (a fault)."""
    policy_view: PolicyView = PolicyView()

    @model_validator(mode="after")
    def _driver_fields(self) -> Camera:
        if self.driver == "realsense" and not self.serial:
            raise ValueError("a realsense camera needs 'serial'")
        if self.driver == "opencv" and self.source is None:
            raise ValueError("an opencv camera needs 'source'")
        crop = self.policy_view.crop
        if crop is not None and (crop[0] + crop[2] > self.width or crop[1] + crop[3] > self.height):
            raise ValueError(f"policy_view.crop {crop} exceeds the {self.width}x{self.height} image")
        return self


# --------------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------------


class OpenpiKeys(_Section):
    """Where an openpi policy server finds each input in the observation dict, and its output.

    They depend on the server's policy config (e.g. DROID or LIBERO inputs); the defaults suit a
    server whose config maps these names to its own.
    """

    images: dict[RosName, str] = {}
    """Key of each view's image; a view not listed is sent as "observation/<view>_image"."""
    state: str = "observation/state"
    """Key of the proprioception vector (see pld_ros.core.observation)."""
    prompt: str = "prompt"
    actions: str = "actions"
    """Key of the H x 7 action chunk in the server's answer."""

    def image_key(self, view: str) -> str:
        return self.images.get(view, f"observation/{view}_image")


class BasePolicy(_Section):
    """The frozen base policy (a VLA, or the embedded simulation policy)."""

    backend: Literal["openpi", "onnx", "torch"]
    uri: str | None = None
    """Policy server for openpi, e.g. "ws://gpu-box:8000"."""
    path: UserPath | None = None
    """Model file for onnx / torch, relative to the profile's directory unless absolute."""
    prompt: str
    """Task instruction given to the policy."""
    views: tuple[RosName, ...] = ("wrist", "side")
    """Camera views the policy sees, in order."""
    chunk_horizon: PositiveInt = 1
    """Actions per predicted chunk (H)."""
    execute_steps: PositiveInt = 1
    """Actions executed from each chunk before the next one is used (k of H)."""
    temporal_ensemble: bool = False
    """Average overlapping chunk predictions for the same tick instead of taking the newest."""
    ensemble_decay: float = 0.5
    """m in the temporal-ensemble weight exp(-m * age in chunks), the newest chunk at age 0 (our
    default: the previous chunk counts 0.61 of the newest). 0 is a plain average; negative favours
    older chunks, as ACT does. Used only with temporal_ensemble."""
    wait_budget: Annotated[float, Field(ge=0.0, lt=0.05)] = 0.010
    """Seconds a control tick may wait for an inference on its own observation, so that a fast
    policy runs synchronously (our default: 10 ms, a fifth of a 20 Hz period). A policy whose
    measured latency exceeds it is never waited for."""
    timeout: PositiveFloat = 2.0
    """Seconds without a fresh action after which the base policy counts as dead (a fault)."""
    openpi: OpenpiKeys = OpenpiKeys()

    @model_validator(mode="after")
    def _backend_fields(self) -> BasePolicy:
        if self.backend == "openpi" and not self.uri:
            raise ValueError("the openpi backend needs 'uri'")
        if self.backend in ("onnx", "torch") and self.path is None:
            raise ValueError(f"the {self.backend} backend needs 'path'")
        if self.execute_steps > self.chunk_horizon:
            raise ValueError("execute_steps cannot exceed chunk_horizon")
        return self


class XiSchedule(_Section):
    """Scale xi of the residual: action = base + xi * residual, ramped linearly over updates."""

    start: NonNegativeFloat = 0.1
    end: NonNegativeFloat = 0.1
    ramp_updates: NonNegativeInt = 0
    """Learner updates over which xi goes from start to end; 0 keeps it at start."""


class ResidualPolicy(_Section):
    """The residual Gaussian actor trained by PLD."""

    hidden_dim: PositiveInt = 256
    num_layers: PositiveInt = 3
    xi: XiSchedule = XiSchedule()
    max_probe_steps: NonNegativeInt = 40
    """K: the base policy runs k ~ U[0, K] steps before the residual takes over."""
    weights: UserPath | None = None
    """Initial weights (safetensors); none starts from zeros, i.e. the base policy alone."""


class Policies(_Section):
    base: BasePolicy
    residual: ResidualPolicy = ResidualPolicy()


# --------------------------------------------------------------------------------------------
# Reward classifier and stages
# --------------------------------------------------------------------------------------------


class Stage(_Section):
    name: RosName
    head: NonNegativeInt = 0
    """Output index of the classifier that scores this stage's success."""
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    """Success probability above which a frame counts as positive. In a profile's ``reward``
    section it may be left out, and then the classifier's own threshold for this stage's head
    is used (:class:`Reward`); the 0.5 default stands only where no model is involved (the
    privileged backend's 0 or 1, a stage built in code)."""
    debounce_frames: PositiveInt = 3
    """Consecutive positive frames needed before the stage counts as done."""
    timeout: PositiveFloat = 30.0
    """Seconds before the stage counts as failed."""
    on_success: str = "done"
    """Next stage name, or "done" to end the episode (or cycle) with success."""
    on_failure: str = "abort"
    """Recovery stage name, or "abort" to end the episode as a failure."""
    retries: NonNegativeInt = 0
    """Times a failed stage is tried again, in a row, before ``on_failure`` is taken (e.g. a
    recovery whose card slipped again)."""
    prompt: str | None = None
    """Instruction the base policy gets during this stage (one multi-task policy with the stage in
    the prompt); none: the policy's own ``prompt``."""


class Reward(_Section):
    """Success classifier and the stage machine it drives.

    **Decision thresholds.** A frame counts as positive for a stage when its head's probability is
    above the stage's ``threshold``. ``pld reward train`` chooses one threshold per head on its
    validation split and writes them into the ONNX file's metadata
    (:class:`~pld_ros.training.reward_metadata.RewardModelMetadata`). The rule:

    - a stage without ``threshold`` takes the model's threshold of its ``head``, read from
      ``path`` when the profile is loaded, so that every node (the supervisor's stage machine
      that applies it, the reward node that logs it) sees the same number;
    - a stage with ``threshold`` overrides the model's; the reward node logs both;
    - without ``threshold``, a model whose metadata holds no thresholds (or too few heads), a
      model file that is missing or unreadable, or the ``torch`` backend (its safetensors files
      carry no threshold) is a configuration error naming the file and the stage;
    - the ``privileged`` backend's scores are 0 or 1: an absent threshold stays 0.5.
    """

    backend: Literal["onnx", "torch", "privileged"]
    """"privileged" uses the simulator's ground truth; only valid in simulation."""
    path: UserPath | None = None
    views: tuple[RosName, ...] = ("wrist", "side")
    stages: tuple[Stage, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _stages_connected(self) -> Reward:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for stage in self.stages:
            if stage.on_success not in (*names, "done"):
                raise ValueError(f"stage {stage.name!r}: on_success {stage.on_success!r} is not a stage")
            if stage.on_failure not in (*names, "abort"):
                raise ValueError(f"stage {stage.name!r}: on_failure {stage.on_failure!r} is not a stage")
        if self.backend != "privileged" and self.path is None:
            raise ValueError(f"the {self.backend} backend needs 'path'")
        return self

    @model_validator(mode="after")
    def _model_thresholds(self) -> Reward:
        """Fill the stages' absent thresholds from the model's metadata (the rule above); after
        the checks of the stages, which a missing model must not hide."""
        missing = [i for i, stage in enumerate(self.stages) if "threshold" not in stage.model_fields_set]
        if not missing or self.backend == "privileged":
            return self
        first = self.stages[missing[0]]
        if self.backend == "torch":
            raise ValueError(
                f"reward.stages[{missing[0]}] ({first.name}): no threshold, and the torch backend's "
                f"file {self.path} carries none: give the stage a threshold"
            )
        from pld_ros.training.reward_metadata import read_reward_metadata

        assert self.path is not None  # _stages_connected checked it
        where = f"reward.stages[{missing[0]}] ({first.name}): no threshold, and the model"
        try:
            metadata = read_reward_metadata(self.path)
        except ValueError as exc:
            raise ValueError(f"{where} cannot be read: {exc}") from None
        if metadata is None:
            raise ValueError(
                f"{where} {self.path} has none in its metadata (not exported by pld reward train): "
                "give the stage a threshold"
            )
        stages = list(self.stages)
        for index in missing:
            stage = stages[index]
            if stage.head >= len(metadata.thresholds):
                raise ValueError(
                    f"reward.stages[{index}] ({stage.name}): no threshold, and the model {self.path} "
                    f"has thresholds for {len(metadata.thresholds)} head(s), not head {stage.head}"
                )
            # In (0, 1) like a given one: RewardModelMetadata checks it.
            stages[index] = stage.model_copy(update={"threshold": metadata.thresholds[stage.head]})
        # The section is frozen; this is its one write, during validation, before anyone holds it.
        object.__setattr__(self, "stages", tuple(stages))
        return self


# --------------------------------------------------------------------------------------------
# Episodes, learning, recording
# --------------------------------------------------------------------------------------------


class Supervisor(_Section):
    control_rate: PositiveFloat = 20.0
    """Control ticks per second, Hz."""
    autostart: bool = True
    """Start running episodes as soon as the graph is up; otherwise wait for the run_episodes action."""
    arm: RosName | None = None
    """Arm whose state ticks the control loop and that the policies command; none: the only arm."""
    home_position: Vector3 | None = None
    """End-effector position of the reset pose in the base frame, m; none: where the arm is when
    the supervisor starts."""
    home_orientation: tuple[float, float, float, float] | None = None
    """End-effector orientation of the reset pose (quaternion x, y, z, w); none: as at start."""
    reset_timeout: PositiveFloat = 20.0
    """Seconds the reset may take before the episode counts as aborted and the reset is retried;
    with ``home_joints_on_reset``, counted from the end of the joint homing."""
    homing_timeout: PositiveFloat = 40.0
    """Seconds the joint homing may take before the episode counts as aborted: longer than the arm
    driver's own bound on a home call (30 s, after which it answers with a failure). A joint move
    back from far takes some 10 s at a low ``relative_dynamics_factor``, longer in a simulator
    slower than real time."""
    run_directory: UserPath = Path("~/.local/share/pld/runs")
    """Where each run writes its episode log (episodes.jsonl) and outcome plot."""
    max_episode_steps: PositiveInt = 200
    mode: Literal["base_only", "probe_takeover", "residual_only"] = "probe_takeover"
    episodes: NonNegativeInt = 0
    """Episodes to run before stopping, aborted ones not counted (they are retried); 0 runs until
    stopped."""
    successes: NonNegativeInt = 0
    """Successful episodes after which the run stops, whatever ``episodes`` says (Stage 2's data
    collection: e.g. 200 successful probe-then-takeover episodes); 0: no such target."""
    warmup_episodes: NonNegativeInt = 10
    """Episodes with the base policy alone before the residual acts (they fill the offline buffer)."""
    home_randomization: NonNegativeFloat = 0.03
    """Half-width of the uniform random offset added to the home position on reset, m."""
    home_joints_on_reset: bool = False
    """Start each reset with a joint-space move of the arm to its ``home_joints`` (the arm
    driver's ``<arm>/home`` service), then the Cartesian move to the randomised home pose.
    Cartesian targets leave the arm configuration free: without it a Franka drifted to its joint
    limits within 20 episodes in the simulated soak (docs/benchmarks.md)."""
    settle_time: NonNegativeFloat = 0.5
    """Seconds the scene must be still after a reset before an episode starts."""
    episode_scope: Literal["task", "stage"] = "task"
    """What one episode is. "task": a reset, then the stages until "done" or "abort". "stage": one
    attempt at one stage, for a long-horizon loop (the YAM's GPU insertion): the next episode
    starts where the last one ended, at the stage the machine routed to, without a reset; only
    "done", "abort" or a fault bring a full reset. Each stage attempt then has its own sparse
    reward, which is what per-sub-task PLD trains on."""
    train_stages: tuple[RosName, ...] = ()
    """Stages whose episodes the residual acts in (probe, then takeover); the others run the base
    policy alone, and the warm-up counts only these. Empty: every stage. With episode_scope
    "stage", this trains one sub-task's specialist on the start states the loop really reaches."""


class Teleop(_Section):
    """Human takeover (keyboard or SpaceMouse): the human's steps go through the same safety layer."""

    device: Literal["keyboard", "spacemouse"] = "keyboard"
    translation_speed: PositiveFloat = 0.1
    """End-effector speed at full deflection (or while a key is held), m/s."""
    rotation_speed: PositiveFloat = 0.5
    """Angular speed at full deflection, rad/s."""
    deadband: UnitInterval = 0.1
    """SpaceMouse deflection (fraction of full scale) below which an axis reads as zero."""
    hold_time: PositiveFloat = 0.2
    """Seconds after the last human input during which the human keeps control."""


class Buffer(_Section):
    directory: UserPath = Path("~/.local/share/pld/episodes")
    """Where episodes are persisted, one file each."""
    capacity: PositiveInt = 1_000_000
    """Transitions kept in memory per buffer (offline and online)."""


class Trainer(_Section):
    """The Stage 1 learner; defaults are the PLD paper's unless marked otherwise."""

    in_graph: bool = False
    """Run the trainer as a node of the robot's graph (a local trainer); off: it runs elsewhere,
    started with ``pld trainer PROFILE`` (e.g. on a GPU box on the same ROS domain)."""
    directory: UserPath = Path("~/.local/share/pld/trainer")
    """The trainer's own files: the episodes it received (episodes/), its checkpoint
    (checkpoint/) and the weights it published (weights/); a restart resumes from them."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: PositiveInt = 256
    discount: Annotated[float, Field(gt=0.0, le=1.0)] = 0.99
    critic_actor_ratio: PositiveInt = 2
    """Critic updates per actor update."""
    actor_lr: PositiveFloat = 3e-4
    """(our default: SAC's usual value)"""
    critic_lr: PositiveFloat = 3e-4
    """(our default: SAC's usual value)"""
    grad_clip: PositiveFloat = 1.0
    target_update_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 0.005
    initial_temperature: PositiveFloat = 1.0
    offline_fraction: UnitInterval = 0.5
    """Share of each batch drawn from the offline buffer (RLPD symmetric sampling)."""
    calql_pretrain_steps: NonNegativeInt = 5000
    """Critic updates of Cal-QL on the offline buffer before online learning (our default)."""
    onthefly_samples: PositiveInt = 10
    """Residuals sampled for the max-Q backup at a fixed base action (our default)."""
    reward_bias: float = 0.0
    image_shift_pixels: NonNegativeInt = 4
    """Random-shift augmentation, pixels of padding at 128x128 (our default)."""
    encoder_weights: UserPath | None = None
    """Pretrained ResNet-10 weights (safetensors); none trains the encoder from scratch."""
    publish_every_updates: PositiveInt = 500
    """Learner updates between two published weight versions."""
    updates_per_step: PositiveFloat = 1.0
    """Online updates per environment transition received, the update-to-data ratio (our choice;
    RLPD raises it with larger critic ensembles). The learner never runs ahead of it, so a trickle
    of robot data is not overfitted; a machine too slow to keep up just falls behind."""
    critic_hidden_dim: PositiveInt = 256
    """Units of each hidden layer of each Q-network (our choice: the actor's width)."""
    critic_num_layers: PositiveInt = 2
    """Linear -> LayerNorm -> tanh blocks of each Q-network (our choice: two, as the RLPD and SERL
    critics)."""
    weight_decay: NonNegativeFloat = 0.01
    """AdamW's decoupled weight decay of the actor and critic (our choice: torch's AdamW default;
    the paper names AdamW without its decay). The temperature is not decayed."""
    target_entropy: float | None = None
    """Entropy the temperature steers the actor's policy to, nats; None: -A, minus the residual's
    dimensions (SAC's usual heuristic, our choice)."""
    backup_entropy: bool = False
    """Subtract the temperature-weighted log-probability of the chosen residual in the on-the-fly
    backup (plain SAC does; our choice is not to: the backup takes the best of the sampled
    residuals, a greedy value that an entropy bonus would blur)."""
    cql_alpha: NonNegativeFloat = 5.0
    """Weight of Cal-QL's conservative term in the critic pretraining (our choice; the CQL and
    Cal-QL papers tune it per domain). 0 pretrains with the TD loss alone (the "PLD without Cal-QL"
    ablation; calql_pretrain_steps 0 skips the pretraining altogether)."""
    cql_samples: PositiveInt = 10
    """Residuals per state drawn uniformly and from the actor each for the conservative term's
    log-sum-exp (our choice, the CQL paper's 10)."""
    n_step: PositiveInt = 1
    """Environment steps per critic backup (our addition; 1 is the paper's one-step backup). With
    n > 1 each target sums up to n discounted rewards and bootstraps n steps ahead, so a sparse
    success propagates to the start of an episode n times sooner, at the price of the off-policy
    bias of the behaviour's intermediate residuals (bench/robosuite_lift/README.md)."""


class Recording(_Section):
    """The recorder node: rosbag2 bags (MCAP) of what the graph publishes, with episode metadata."""

    enabled: bool = False
    """Add the recorder to the graph."""
    directory: UserPath = Path("~/.local/share/pld/bags")
    """Where the bags go, one directory per bag."""
    split: Literal["episode", "session"] = "episode"
    """One bag per episode (between the supervisor's STARTED and ENDED), or one for the whole run."""
    compression: Literal["none", "zstd"] = "zstd"
    """zstd per MCAP chunk; camera images shrink little, state and events a lot."""
    topics: tuple[str, ...] | None = None
    """Topics to record, relative to the graph's namespace; none: what a dataset needs
    (:func:`pld_ros.data.recording.default_topics`: states, commands, cameras, policy actions,
    scores, episode events and stages, weight announcements)."""
    queue_megabytes: PositiveFloat = 512.0
    """Serialized messages the recorder holds waiting for the disk before it drops new ones (it
    counts them); episode events are never dropped. 512 MB is about 9 s of two 640x480 cameras at
    30 Hz: a slow disk's stall, not a disk that cannot keep up (our choice)."""
    chunk_period: PositiveFloat = 1.0
    """Seconds after which an MCAP chunk is closed and handed to the OS even if not full (1 MiB):
    what a killed recorder can lose at most (our choice)."""


class Simulation(_Section):
    """The simulated twin that replaces hardware in a simulated variant."""

    world: Literal["franka_pick_cube", "yam_gpu_insertion", "external"]
    """The world the graph hosts; "external": the simulator runs outside the graph (a franky-sim
    started by hand or by a test), and the graph only connects to it."""
    real_time_factor: PositiveFloat = 1.0
    """Target pace of the physics (simulated s per wall s); it runs slower when the machine cannot
    keep up."""
    paced_by_simulated_time: bool = True
    """The arm driver ticks every 1/control_rate s of the simulator's clock (the arm's own time),
    so the whole graph slows down with a simulator that falls behind and a policy still sees
    50 ms of physics per tick at 20 Hz. Off: ticks follow wall time, as on real hardware."""
    render_width: PositiveInt = 128
    """Sim cameras render this size with the real camera's vertical field of view; the square
    render stands in for the real camera's centred square crop, so it is published whole."""
    render_height: PositiveInt = 128
    seed: NonNegativeInt = 0


class ExtraNode(_Section):
    """A node added to the graph as it is (a monitoring tool, a team's own node)."""

    name: RosName
    package: str = "pld_ros"
    executable: str
    namespace: str = ""
    parameters: dict[str, bool | int | float | str | list[bool] | list[int] | list[float] | list[str]] = {}
    respawn: bool = False
    """Restart the node when it exits; otherwise its exit stops the graph."""


class Profile(_Section):
    name: RosName
    robot_id: RosName
    """Identifies this robot's data when several robots feed one trainer."""
    description: str = ""
    arms: dict[RosName, Arm] = {}
    """Arms by name; the name is the namespace of the arm's topics (e.g. "left", "right")."""
    cameras: dict[RosName, Camera] = {}
    """Cameras by name; the name is also the view name policies use (e.g. "wrist", "side")."""
    policies: Policies | None = None
    reward: Reward | None = None
    supervisor: Supervisor = Supervisor()
    teleop: Teleop = Teleop()
    buffer: Buffer = Buffer()
    trainer: Trainer = Trainer()
    recording: Recording = Recording()
    simulation: Simulation | None = None
    """Present in simulated variants only."""
    extra_nodes: tuple[ExtraNode, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        names = [n.name for n in self.extra_nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"extra_nodes names must be unique, got {names}")
        cameras = set(self.cameras)
        used = list(self.policies.base.views if self.policies else ()) + list(
            self.reward.views if self.reward else ()
        )
        for view in used:
            if view not in cameras:
                raise ValueError(
                    f"view {view!r} is not a camera of this profile (cameras: {sorted(cameras)})"
                )
        stages = [stage.name for stage in self.reward.stages] if self.reward else []
        for name in self.supervisor.train_stages:
            if name not in stages:
                raise ValueError(f"supervisor.train_stages: {name!r} is not a reward stage ({stages})")
        if self.supervisor.arm is not None and self.supervisor.arm not in self.arms:
            raise ValueError(f"supervisor.arm {self.supervisor.arm!r} is not an arm of this profile")
        if self.supervisor.arm is None and len(self.arms) > 1 and self.policies is not None:
            raise ValueError(
                "supervisor.arm must name the arm the policies command (the profile has several)"
            )
        if self.simulation is None:
            if any(c.driver == "sim" for c in self.cameras.values()):
                raise ValueError("a 'sim' camera needs a 'simulation' section")
            if self.reward is not None and self.reward.backend == "privileged":
                raise ValueError("the 'privileged' reward needs a 'simulation' section")
        return self

    @property
    def simulated(self) -> bool:
        return self.simulation is not None

    @property
    def control_arm(self) -> str:
        """The arm the policies command and whose state ticks the control loop."""
        if self.supervisor.arm is not None:
            return self.supervisor.arm
        if not self.arms:
            raise ValueError(f"profile {self.name!r} has no arm")
        return next(iter(self.arms))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def default_config_dir() -> Path:
    """Where the shipped profiles live: ``config/`` in the source tree, ``share/pld_ros/config`` installed."""
    override = os.environ.get("PLD_CONFIG_DIR")
    if override:
        return Path(override)
    here = Path(__file__).resolve()
    for candidate in (
        here.parents[3] / "config",  # source tree: <root>/src/pld_ros/pld_ros/profile.py
        here.parents[4] / "share" / "pld_ros" / "config",  # install: <prefix>/lib/pythonX/site-packages/
    ):
        if candidate.is_dir():
            return candidate
    return here.parents[3] / "config"


def resolve_profile_path(profile: str | Path, *, sim: bool = False, config_dir: Path | None = None) -> Path:
    """Turn a profile name ("franka_pick_cube") or a path into the file to load.

    With ``sim``, a name resolves to its simulated variant ``<name>_sim.yaml``.
    """
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ProfileError(f"{path}: no such profile file")
        return path.resolve()
    directory = config_dir or default_config_dir()
    name = str(profile)
    if sim and not name.endswith("_sim"):
        name += "_sim"
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ProfileError(f"no profile named {name!r} in {directory} (known: {', '.join(known) or 'none'})")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _raw_profile(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ProfileError(f"{path}: 'extends' loops: {' -> '.join(str(p) for p in (*seen, path))}")
    data = _absolute_paths(_read_yaml(path), path.parent)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ProfileError(f"{path}: 'extends' must name a profile file, got {parent!r}")
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        raise ProfileError(f"{path}: extends {parent!r}, which does not exist ({parent_path})")
    return _merge(_raw_profile(parent_path, (*seen, path)), data)


def describe_validation_error(source: Path, error: ValidationError) -> str:
    """One line per problem: file, dotted field path, the value given, and why it is wrong."""
    lines = [f"{source}: invalid profile ({error.error_count()} problem(s))"]
    for problem in error.errors():
        loc = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        reason = problem["msg"]
        if problem["type"] == "missing":
            lines.append(f"  {loc}: required field is missing")
        elif problem["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown field (value {problem['input']!r}); check its spelling")
        else:
            lines.append(f"  {loc}: {reason} (value {problem['input']!r})")
    return "\n".join(lines)


def parse_profile(data: Mapping[str, Any], source: Path) -> Profile:
    """Validate a profile's data read from ``source`` (relative paths are relative to its directory)."""
    try:
        profile = Profile.model_validate(_absolute_paths(dict(data), source.parent))
    except ValidationError as exc:
        raise ProfileError(describe_validation_error(source, exc)) from None
    return profile


PATH_FIELDS = (
    ("policies", "base", "path"),
    ("policies", "residual", "weights"),
    ("reward", "path"),
    ("trainer", "encoder_weights"),
    ("trainer", "directory"),
    ("buffer", "directory"),
    ("recording", "directory"),
    ("supervisor", "run_directory"),
)
"""Fields naming files or directories. A relative one is relative to the profile file that sets
it, so a profile directory moves whole and an overlay elsewhere still finds its base's models."""


def _absolute_paths(data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``data`` with the relative paths of PATH_FIELDS made absolute against ``base``."""

    def resolve(section: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any]:
        key, rest = keys[0], keys[1:]
        value = section.get(key)
        if rest:
            return {**section, key: resolve(value, rest)} if isinstance(value, Mapping) else section
        if not isinstance(value, str | Path):
            return section
        path = Path(value).expanduser()
        return {**section, key: str(path if path.is_absolute() else (base / path).resolve())}

    for keys in PATH_FIELDS:
        data = resolve(data, keys)
    return dict(data)


def load_profile(profile: str | Path, *, sim: bool = False, config_dir: Path | None = None) -> Profile:
    """Load, merge (``extends``) and validate a profile; raise :class:`ProfileError` if unusable."""
    path = resolve_profile_path(profile, sim=sim, config_dir=config_dir)
    loaded = parse_profile(_raw_profile(path), path)
    if sim and not loaded.simulated:
        raise ProfileError(f"{path}: --sim asked for, but this profile has no 'simulation' section")
    return loaded
