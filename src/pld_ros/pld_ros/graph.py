"""The node graph of a profile: which nodes run, with which parameters, in which namespaces.

One function, :func:`build_graph`, computes it; the launch files turn it into ``launch_ros``
actions and ``pld launch`` into processes, so both start exactly the same nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pld_ros.profile import Profile

ParameterValue = bool | int | float | str | list[bool] | list[int] | list[float] | list[str]

HEARTBEAT_TOPIC = "/pld/heartbeat"
"""Every pld node publishes its liveness here; the health monitor watches it."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    executable: str
    package: str = "pld_ros"
    namespace: str = ""
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    respawn: bool = False
    """Restart on exit. A node that is not respawned is required: its exit stops the graph."""
    respawn_delay: float = 1.0
    ends_run: bool = False
    """The node finishes the run: its clean exit (code 0) stops the graph as completed, not failed
    (the supervisor after its count of episodes)."""

    @property
    def fully_qualified_name(self) -> str:
        namespace = self.namespace.strip("/")
        return f"/{namespace}/{self.name}" if namespace else f"/{self.name}"


@dataclass(frozen=True)
class Graph:
    profile: Profile
    profile_path: Path
    nodes: tuple[NodeSpec, ...]

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise KeyError(f"no node {name!r} in the graph of profile {self.profile.name!r}")


def _episode_layer(
    profile: Profile, profile_parameter: dict[str, ParameterValue], episodes: int | None
) -> list[NodeSpec]:
    """Policies, reward and supervisor: the nodes that run episodes (docs/policy_layer.md)."""
    nodes = []
    if profile.policies is not None:
        nodes += [
            NodeSpec(name="base_policy", executable="base_policy", parameters=dict(profile_parameter)),
            NodeSpec(
                name="residual_policy", executable="residual_policy", parameters=dict(profile_parameter)
            ),
        ]
    if profile.reward is not None:
        nodes.append(
            NodeSpec(
                name="reward_classifier", executable="reward_classifier", parameters=dict(profile_parameter)
            )
        )
    if profile.policies is not None and profile.reward is not None:
        # Records every episode the graph runs (buffer.directory) and streams it to the trainer.
        nodes.append(
            NodeSpec(name="replay_buffer", executable="replay_buffer", parameters=dict(profile_parameter))
        )
        if profile.trainer.in_graph:
            nodes.append(NodeSpec(name="trainer", executable="trainer", parameters=dict(profile_parameter)))
        # No episode before the replay buffer is up: one it never saw is robot time lost (under
        # load its process can take longer to start than the first reset).
        supervisor: dict[str, ParameterValue] = {
            **profile_parameter,
            "requires": ["/residual_policy", "/replay_buffer"],
        }
        if episodes is not None:
            supervisor["episodes"] = episodes
        nodes.append(
            NodeSpec(name="supervisor", executable="supervisor", parameters=supervisor, ends_run=True)
        )
    return nodes


def build_graph(profile: Profile, profile_path: Path, *, episodes: int | None = None) -> Graph:
    """Compute the node graph of a validated profile.

    Nodes that serve a profile section get ``profile_path`` as their ``profile`` parameter and
    read their section from the same validated file, rather than from a second copy of its values.
    ``episodes`` overrides the supervisor's episode count (``pld demo``).
    """
    profile_parameter: dict[str, ParameterValue] = {"profile": str(profile_path)}
    arms = [
        NodeSpec(name=f"{arm}_driver", executable="arm_driver", parameters={**profile_parameter, "arm": arm})
        for arm in profile.arms
    ]
    # An external simulator runs outside the graph; every other world is hosted by sim_world.
    world = (
        [NodeSpec(name="sim_world", executable="sim_world", parameters=dict(profile_parameter))]
        if profile.simulation is not None and profile.simulation.world != "external"
        else []
    )
    # Simulated cameras are rendered and published by the world itself.
    cameras = [
        NodeSpec(name=f"{name}_camera", executable="camera", parameters={**profile_parameter, "camera": name})
        for name, camera in profile.cameras.items()
        if camera.driver != "sim"
    ]
    extra = [
        NodeSpec(
            name=node.name,
            executable=node.executable,
            package=node.package,
            namespace=node.namespace,
            parameters=dict(node.parameters),
            respawn=node.respawn,
        )
        for node in profile.extra_nodes
    ]
    # Respawned: a recorder that dies loses at most its open chunk, and the next episode's bag
    # should not depend on it.
    recorder = (
        [NodeSpec(name="recorder", executable="recorder", parameters=dict(profile_parameter), respawn=True)]
        if profile.recording.enabled
        else []
    )
    own = [*world, *arms, *cameras, *_episode_layer(profile, profile_parameter, episodes), *recorder, *extra]
    watched = [spec.fully_qualified_name for spec in own if spec.package == "pld_ros"]
    monitor = NodeSpec(
        name="health_monitor",
        executable="health_monitor",
        parameters={"expected": watched} if watched else {},
        respawn=True,
    )
    nodes = (monitor, *own)
    names = [spec.fully_qualified_name for spec in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"profile {profile.name!r}: node names clash: {', '.join(duplicates)}")
    return Graph(profile=profile, profile_path=profile_path, nodes=nodes)
