"""Turn a profile's node graph into a ROS 2 launch description (``ros2 launch pld_ros ...``).

Only a full ROS 2 install has ``launch`` and ``launch_ros``; everything that decides what runs
lives in :mod:`pld_ros.graph`, which is tested without them. This module only translates.
"""

from __future__ import annotations

from typing import Any

from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription
from pld_ros.graph import build_graph
from pld_ros.profile import load_profile, resolve_profile_path


def _nodes(context: LaunchContext, default_profile: str) -> list[Any]:
    profile = LaunchConfiguration("profile").perform(context) or default_profile
    sim = LaunchConfiguration("sim").perform(context).lower() in ("true", "1", "yes")
    path = resolve_profile_path(profile, sim=sim)
    graph = build_graph(load_profile(path, sim=sim), path)
    return [
        Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            namespace=spec.namespace,
            parameters=[spec.parameters],
            remappings=list(spec.remappings),
            respawn=spec.respawn,
            respawn_delay=spec.respawn_delay,
            output="screen",
            # A node that is not respawned is required, as under `pld launch`; one that ends the
            # run (the supervisor) shuts the graph down when it is done.
            on_exit=None if spec.respawn else Shutdown(reason=f"node {spec.name} exited"),
        )
        for spec in graph.nodes
    ]


def generate(default_profile: str) -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("sim", default_value="false", description="Use the simulated variant."),
            DeclareLaunchArgument(
                "profile",
                default_value="",
                description=f"Profile name or YAML path (default {default_profile}).",
            ),
            OpaqueFunction(function=_nodes, args=[default_profile]),
        ]
    )
