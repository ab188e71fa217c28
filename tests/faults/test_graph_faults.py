"""Faults injected into the running simulated franka_pick_cube graph.

One graph runs for the whole module, every node a real process talking over DDS: sim_world
(franky-sim's MuJoCo FR3, the cube, the wrist camera and the privileged success signal), the arm
driver connected to it through franky, a camera node playing a looped video as the side camera
(so that one camera can stop while the world runs), the base policy, the residual policy, the
privileged reward, the replay buffer, the recorder and the supervisor running episodes without
end. The base policy is an openpi client of a policy server in this process
(:class:`tests.openpi_server.OpenpiTestServer`: no VLA can run here; its chunks wander the arm
around and, on demand, are NaN or huge). Each test injects one fault into that graph, checks
what the system did, and that it recovered; they run in file order, the most disruptive last.

After every test the shared invariants (:mod:`tests.faults.invariants`) are checked over
everything seen since the graph started: the arm never commanded outside its limits, no counted
episode lost or damaged in the replay buffer, every bag readable.
"""

from __future__ import annotations

import hashlib
import re
import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from pld_msgs.msg import DeltaPoseCommand, EpisodeEvent, PolicyWeights, RobotState
from pld_ros.core.atomic_file import TEMPORARY_SUFFIX
from pld_ros.core.episode import Outcome
from pld_ros.core.episode_log import EpisodeRecord, read_episodes
from pld_ros.core.observation import ACTION_DIM
from pld_ros.data.bags import BagInfo
from pld_ros.models.residual_actor import ResidualActor, save_actor
from pld_ros.policies.residual import actor_config
from tests.conftest import CONFIG_DIR
from tests.faults.graph import Diagnostic, GraphProbe, GraphProcesses
from tests.faults.invariants import episode_losses, limit_violations, read_bags, stored_episodes
from tests.openpi_server import OpenpiTestServer
from tests.recordings import write_video

pytestmark = [pytest.mark.faults, pytest.mark.ros, pytest.mark.slow]

HOST = "127.0.0.91"
"""franky-sim's address: one of this module's own, so other simulated graphs can run beside it."""
EPISODE_STEPS = 40
"""Short episodes (2 s of simulated time): several per fault, a few seconds each."""
STALE_AFTER = 0.5
"""s without a frame before a camera is stale (the profile's default, written out for the test)."""
WAIT = 90.0
"""s any one wait for the graph may take: generous, a loaded 2-core machine runs the physics slowly."""
STORE_GRACE = 10.0
"""s an ended episode may take to reach the replay buffer's store before it counts as lost."""


class Wanderer:
    """The stand-in VLA's chunks: small deltas that wander the arm about (and, as the residual's
    are added, sometimes toward the workspace's walls), or NaN or huge actions on demand."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.mode = "wander"

    def __call__(self, _request: dict[str, Any], number: int) -> np.ndarray:
        actions = np.zeros((self.horizon, ACTION_DIM), dtype=np.float32)
        if self.mode == "nan":
            actions[:] = np.nan
            actions[:, 2] = np.inf
        elif self.mode == "huge":
            # 10 m and 3 rad a tick, a gripper far past closed: a policy gone mad.
            actions[:, :3] = (10.0, -10.0, 10.0)
            actions[:, 3:6] = 3.0
            actions[:, 6] = 50.0
        else:
            angle = 0.4 * number
            actions[:, 0] = 0.012 * np.cos(angle)
            actions[:, 1] = 0.012 * np.sin(angle)
            actions[:, 2] = 0.006 * np.cos(0.7 * angle)
            actions[:, 6] = 0.5 + 0.5 * np.sin(0.1 * number)
        return actions


@dataclass
class Rig:
    """The running graph, its policy server, the test's probe and where the graph writes."""

    processes: GraphProcesses
    server: OpenpiTestServer
    wanderer: Wanderer
    probe: GraphProbe
    root: Path
    cut_bags: set[int] = field(default_factory=set)
    """Episodes whose bag was cut on purpose (recorder killed, disk full)."""
    unwritten: set[int] = field(default_factory=set)
    """Episodes whose replay-buffer write was made to fail."""

    @property
    def episodes_dir(self) -> Path:
        return self.root / "episodes"

    @property
    def bags_dir(self) -> Path:
        return self.root / "bags"

    def records(self) -> list[EpisodeRecord]:
        runs = list((self.root / "runs").iterdir())
        return read_episodes(runs[0]) if runs else []

    def why(self) -> str:
        ends = [(e.episode_id, Outcome(e.outcome.value).name, e.reason) for e in self.probe.ended()]
        return f"episodes ended: {ends[-8:]}\n{self.processes.output()}"

    def running_episode(self, after: int = -1) -> int:
        """Wait for an episode (newer than ``after``) whose policy commands are flowing; its id."""
        probe = self.probe

        def acting() -> bool:
            started = probe.started(after)
            if not started:
                return False
            episode = started[-1].episode_id
            ended = any(e.episode_id == episode for e in probe.ended())
            steps = [
                c.step for _, c in list(probe.commands) if c.episode_id == episode and c.source.value != 4
            ]
            return not ended and len(steps) >= 5

        probe.wait(acting, WAIT, lambda: f"an episode under way\n{self.why()}")
        return probe.last_episode()

    def ended(self, episode: int) -> EpisodeEvent:
        self.probe.wait(
            lambda: any(e.episode_id == episode for e in self.probe.ended()),
            WAIT,
            lambda: f"the end of episode {episode}\n{self.why()}",
        )
        return next(e for e in self.probe.ended() if e.episode_id == episode)

    def counted_episode_after(self, episode: int) -> EpisodeEvent:
        """Wait for an episode after ``episode`` that ends as a success or a failure: the run goes on."""
        self.probe.wait(
            lambda: any(e.outcome.value != Outcome.ABORTED for e in self.probe.ended(episode)),
            WAIT,
            lambda: f"an episode after {episode} that is not aborted\n{self.why()}",
        )
        return next(e for e in self.probe.ended(episode) if e.outcome.value != Outcome.ABORTED)

    def refused(self) -> set[int]:
        """Episodes the replay buffer reported as not stored because they were incomplete."""
        return {
            int(m)
            for d in self.probe.diagnostic("pld/replay_buffer")
            for m in re.findall(r"episode (\d+) incomplete", d.values.get("last_dropped", ""))
        }

    def check_invariants(self) -> None:
        profile = self.processes.profile
        states = [s for _, s in list(self.probe.states)]
        assert states, "no arm state seen"
        violations = limit_violations(states, profile.arms["arm"].safety, profile.supervisor.control_rate)
        assert not violations, "\n".join(violations[:20])
        # The supervisor logs an episode's end before the replay buffer has written it (tens of
        # ms later, more on a loaded machine): a loss is one that stays. An episode the replay
        # buffer refused as incomplete (ticks never recorded, e.g. while a camera came back after
        # a reconnect) was never whole: it must be absent, like one whose write failed.
        deadline = time.monotonic() + STORE_GRACE
        while losses := episode_losses(
            self.episodes_dir, self.records(), unwritten=self.unwritten | self.refused()
        ):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not losses, "\n".join(losses)
        _, bag_problems = self.bags()
        assert not bag_problems, "\n".join(bag_problems)

    def bags(self) -> tuple[dict[int, BagInfo], list[str]]:
        """:func:`read_bags` without the episodes under way; the bag of one that has just ended is
        closed a moment after its end event, so a problem is one that stays."""
        deadline = time.monotonic() + STORE_GRACE
        while True:
            ended = {e.episode_id for e in self.probe.ended()}
            writing = {e.episode_id for e in self.probe.started()} - ended
            bags, problems = read_bags(self.bags_dir, cut=self.cut_bags, writing=writing)
            if not problems or time.monotonic() > deadline:
                return bags, problems
            time.sleep(0.2)


def write_profile(root: Path, server_uri: str, video: Path) -> Path:
    overlay: dict[str, object] = {
        "extends": str(CONFIG_DIR / "franka_pick_cube_sim.yaml"),
        "arms": {"arm": {"host": HOST}},
        "cameras": {
            # A camera node instead of the world's render: a camera that can stop on its own.
            "side": {
                "driver": "opencv",
                "source": str(video),
                "serial": None,
                "width": 128,
                "height": 128,
                "fps": 20,
                "stale_after": STALE_AFTER,
                "policy_view": {"width": 128, "height": 128, "crop": None},
            },
            "wrist": {"stale_after": STALE_AFTER},
        },
        "policies": {
            "base": {
                "backend": "openpi",
                "uri": server_uri,
                "path": None,
                "chunk_horizon": 4,
                "execute_steps": 2,
                "timeout": 1.0,
            },
            "residual": {"max_probe_steps": 5},
        },
        "supervisor": {
            "max_episode_steps": EPISODE_STEPS,
            "warmup_episodes": 1,
            "settle_time": 0.2,
            "episodes": 0,  # until stopped
            "run_directory": str(root / "runs"),
        },
        "buffer": {"directory": str(root / "episodes")},
        "recording": {"enabled": True, "directory": str(root / "bags"), "chunk_period": 0.5},
    }
    path = root / "faults_sim.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("faults")
    video = root / "side.avi"
    write_video(video, 60, 128, 128, 20, (16, 112))
    wanderer = Wanderer(horizon=4)
    server = OpenpiTestServer(latency=0.02, chunks=wanderer).start()
    profile = write_profile(root, server.uri, video)
    processes = GraphProcesses(
        profile, parameters={"side_camera": {"playback_file": str(video), "playback_loop": True}}
    )
    probe = GraphProbe()
    rig = Rig(processes, server, wanderer, probe, root)
    processes.start_all()
    try:
        # The first counted episode: every node is up and the run goes.
        rig.counted_episode_after(-1)
        yield rig
    finally:
        processes.stop_all()
        probe.close()
        server.stop()


@pytest.fixture
def graph(rig: Rig) -> Iterator[Rig]:
    """The module's graph, its invariants checked after the test (the output shown on failure)."""
    try:
        yield rig
        rig.check_invariants()
    except BaseException:
        print(rig.why())
        raise


def latest(diagnostics: list[Diagnostic]) -> Diagnostic:
    assert diagnostics, "no such diagnostics"
    return diagnostics[-1]


def count(diagnostic: Diagnostic, *keys: str) -> int:
    """The sum of counters of a status (a counter that never counted is absent: 0)."""
    return sum(int(diagnostic.values.get(key, "0")) for key in keys)


def nan_command() -> DeltaPoseCommand:
    command = DeltaPoseCommand(gripper=float("nan"))
    command.translation.x = float("nan")
    command.rotation.z = float("inf")
    return command


def test_nan_and_huge_actions_never_move_the_arm_outside_its_limits(graph: Rig) -> None:
    probe = graph.probe
    # The VLA answers NaN: the base policy refuses the chunks, holds, and the supervisor aborts.
    episode = graph.running_episode()
    since = time.monotonic()
    graph.wanderer.mode = "nan"
    try:
        ended = graph.ended(episode)
    finally:
        graph.wanderer.mode = "wander"
    assert ended.outcome.value == Outcome.ABORTED and ended.reason.startswith("base policy stale"), ended
    probe.wait(
        lambda: any(
            "non-finite" in d.values.get("last_error", "") for d in probe.diagnostic("pld/policy/base", since)
        ),
        WAIT,
        "the base policy's report of the NaN chunks",
    )
    # The VLA answers 10 m and 3 rad a tick, and another node publishes NaN commands meanwhile:
    # the arm driver's safety layer clips the one and rejects the other.
    episode = graph.running_episode(episode)
    since = time.monotonic()
    graph.wanderer.mode = "huge"
    try:
        for _ in range(30):
            probe.publish(lambda: probe.arm_commands.publish(nan_command()))
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        graph.wanderer.mode = "wander"

    def arm() -> Diagnostic:
        return latest(probe.diagnostic("pld/arm/arm", since))

    probe.wait(
        lambda: (
            count(arm(), "rejected_nonfinite") > 0
            and count(arm(), "clipped_translation_step", "clipped_workspace") > 0
            and count(arm(), "clipped_rotation_step") > 0
        ),
        WAIT,
        lambda: f"the safety layer's counters {arm().values}",
    )
    # The residual policy already keeps the gripper in [0, 1]; every command on the topic that is
    # finite (the NaN ones are the test's own) asks for a closure in range.
    grippers = [c.gripper for t, c in list(probe.commands) if t > since and np.isfinite(c.gripper)]
    assert grippers and all(0.0 <= g <= 1.0 for g in grippers), max(grippers, default=None)
    # The run goes on with sane actions.
    graph.counted_episode_after(episode)


def test_corrupt_weights_are_rejected_and_the_robot_keeps_its_verified_ones(graph: Rig) -> None:
    probe = graph.probe
    config = actor_config(graph.processes.profile)
    good, bad = graph.root / "v1.safetensors", graph.root / "v2.safetensors"
    torch.manual_seed(0)
    save_actor(ResidualActor(config), good, version=1, updates=10)
    save_actor(ResidualActor(config), bad, version=2, updates=20)
    # Cut off its tail: the announcement's checksum and size match the damaged file, so only
    # the reader's own checks can catch it.
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])

    def announce(path: Path, version: int) -> None:
        data = path.read_bytes()
        message = PolicyWeights(
            policy="residual",
            version=version,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            uri=f"file://{path}",
            format="safetensors",
            trainer_id="faults",
        )
        probe.publish(lambda: probe.weights.publish(message))

    def residual() -> dict[str, str]:
        found = probe.diagnostic("pld/policy/residual")
        return found[-1].values if found else {}

    announce(good, 1)
    probe.wait(lambda: residual().get("weights_version") == "1", WAIT, lambda: f"version 1 {residual()}")
    announce(bad, 2)
    probe.wait(lambda: residual().get("rejected_weights") == "1", WAIT, lambda: f"a rejection {residual()}")
    values = residual()
    assert values["weights_version"] == "1"
    assert "version 2" in values["last_rejection"]
    # Episodes go on under version 1.
    after = probe.last_episode()
    graph.counted_episode_after(after)
    assert residual()["weights_version"] == "1"


def test_a_camera_that_stops_aborts_the_episode_without_commanding_on_stale_views(graph: Rig) -> None:
    probe = graph.probe
    episode = graph.running_episode()
    graph.processes.signal("side_camera", signal.SIGSTOP)  # frames stop; the node is frozen
    stopped = time.monotonic()
    try:
        ended = graph.ended(episode)
        assert ended.outcome.value == Outcome.ABORTED, ended
        # The side camera is named (on a loaded machine the rendered wrist may be late at the same tick).
        assert re.fullmatch(r"cameras? (\w+, )*side(, \w+)* stale", ended.reason), ended.reason
        time.sleep(3.0)  # the supervisor waits and starts nothing while the camera is gone
        assert probe.last_episode() == episode
    finally:
        graph.processes.signal("side_camera", signal.SIGCONT)
    resumed = time.monotonic()
    # Once the view is stale, every command is a hold (no motion): nothing acts on old frames.
    stale = stopped + STALE_AFTER + 0.5
    moving = [
        c
        for t, c in list(probe.commands)
        if stale < t < resumed and (c.translation.x, c.translation.y, c.translation.z) != (0.0, 0.0, 0.0)
    ]
    assert not moving, moving[:3]
    # The frames come back, and with them the run.
    graph.counted_episode_after(episode)


def test_a_policy_server_that_dies_aborts_the_episode_and_the_run_recovers(graph: Rig) -> None:
    probe = graph.probe
    episode = graph.running_episode()
    graph.server.stop()
    try:
        ended = graph.ended(episode)
        assert ended.outcome.value == Outcome.ABORTED, ended
        assert ended.reason.startswith("base policy stale for"), ended.reason
        # Nothing new starts while the server is gone: the supervisor waits for base actions.
        time.sleep(3.0)
        waiting = [e for e in probe.ended(episode)]
        assert all(e.outcome.value == Outcome.ABORTED for e in waiting), waiting
    finally:
        graph.server.start()
    graph.counted_episode_after(episode)


def test_a_recorder_killed_mid_episode_leaves_its_bags_readable_and_comes_back(graph: Rig) -> None:
    probe = graph.probe
    episode = graph.running_episode()
    time.sleep(1.0)  # a few closed chunks into the episode's bag
    graph.processes.kill("recorder")
    # The recorder may have heard of a start the probe has not yet: a moment before counting.
    time.sleep(1.0)
    cut = set(range(episode, probe.last_episode() + 1))
    graph.cut_bags.update(cut)
    graph.processes.start("recorder").wait_for(r"recording \d+ topic\(s\)", WAIT)
    # Episodes that began while it was down or starting have no bag (or one from the middle on):
    # the first whole bag is of an episode that starts after it is back.
    back = probe.last_episode()
    later = graph.counted_episode_after(back)
    # The bag of an episode after the restart is complete; the cut one reads up to its last chunk.
    probe.wait(
        lambda: later.episode_id in graph.bags()[0],
        WAIT,
        f"the bag of episode {later.episode_id}",
    )
    bags, problems = graph.bags()
    assert not problems, problems
    assert [i for i in cut if i in bags and not bags[i].complete and bags[i].message_count > 0], cut
    assert bags[later.episode_id].complete


def set_file_size_limit(pid: int, limit: int) -> None:
    """Lower (or restore) the soft RLIMIT_FSIZE of a running process: its writes past ``limit``
    bytes of any file fail with EFBIG ("File too large"), as they would with ENOSPC on a full
    disk; Python ignores SIGXFSZ, so the process is not killed."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))


def test_a_full_disk_fails_the_episode_writes_cleanly_and_loses_nothing_stored(graph: Rig) -> None:
    probe = graph.probe
    stored_before = set(stored_episodes(graph.episodes_dir)[0])
    first = graph.running_episode()
    since = time.monotonic()
    full = 64 * 1024  # bytes: more than a log line, less than any episode file or bag
    writers = ("replay_buffer", "recorder")
    for name in writers:
        set_file_size_limit(graph.processes.pid(name), full)
    try:
        probe.wait(
            lambda: any(
                "last write failed" in d.message for d in probe.diagnostic("pld/replay_buffer", since)
            ),
            WAIT,
            lambda: f"the replay buffer's write failure\n{graph.why()}",
        )
    finally:
        for name in writers:
            set_file_size_limit(graph.processes.pid(name), resource.RLIM_INFINITY)
        # Every episode under way while the disk was full may have lost its bag or its file.
        graph.cut_bags.update(range(first, probe.last_episode() + 1))
    failures = [d for d in probe.diagnostic("pld/replay_buffer", since) if "last write failed" in d.message]
    failed = failures[0]
    assert failed.level == 2 and "File too large" in failed.message, failed.message
    graph.unwritten.update(int(m) for d in failures for m in re.findall(r"episode (\d+):", d.message))
    assert graph.unwritten, failed.message
    # Nothing half-written is left, and everything stored before is still there.
    assert stored_before <= set(stored_episodes(graph.episodes_dir)[0])
    leftovers = [p.name for p in graph.episodes_dir.iterdir() if p.name.endswith(TEMPORARY_SUFFIX)]
    assert not leftovers, leftovers
    probe.wait(
        lambda: count(latest(probe.diagnostic("pld/recorder", since)), "write_errors") >= 1,
        WAIT,
        "the recorder's write error",
    )
    # With space again, the next episode is stored.
    later = graph.counted_episode_after(max(graph.cut_bags))
    probe.wait(
        lambda: later.episode_id in stored_episodes(graph.episodes_dir)[0],
        WAIT,
        f"episode {later.episode_id} stored",
    )


def test_a_lost_robot_stops_the_episode_and_the_driver_reconnects_when_it_is_back(graph: Rig) -> None:
    """franky-sim runs inside sim_world here (it hosts the simulated arm and renders the wrist
    camera): killing that process drops the robot's connection, as a robot that drops off the
    network, and takes the wrist camera and the success signal with it."""
    probe = graph.probe
    episode = graph.running_episode()
    graph.processes.kill("sim_world")
    lost = time.monotonic()
    probe.wait(
        lambda: any(s.mode == RobotState.MODE_DISCONNECTED for t, s in list(probe.states) if t > lost),
        WAIT,
        "DISCONNECTED",
    )
    disconnected = next(
        s for t, s in list(probe.states) if t > lost and s.mode == RobotState.MODE_DISCONNECTED
    )
    assert "Network" in disconnected.error or "TCP" in disconnected.error or "UDP" in disconnected.error
    ended = graph.ended(episode)
    assert ended.outcome.value == Outcome.ABORTED, ended
    probe.wait(
        lambda: any(
            d.level == 2 and d.message.startswith("disconnected")
            for d in probe.diagnostic("pld/arm/arm", lost)
        ),
        WAIT,
        "the arm's ERROR diagnostics",
    )
    # While it is gone, the driver commands nothing: no state is MOVING.
    time.sleep(2.0)
    restarted = time.monotonic()
    assert not [
        s for t, s in list(probe.states) if lost + 1.0 < t < restarted and s.mode == RobotState.MODE_MOVING
    ]
    graph.processes.start("sim_world")
    probe.wait(
        lambda: any(
            s.mode == RobotState.MODE_IDLE or s.mode == RobotState.MODE_MOVING
            for t, s in list(probe.states)
            if t > restarted
        ),
        WAIT,
        "the driver reconnected",
    )
    graph.counted_episode_after(episode)
    assert any(
        int(d.values.get("connection_losses", "0")) >= 1 for d in probe.diagnostic("pld/arm/arm", lost)
    )
