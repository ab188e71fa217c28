"""The docker/ files checked against the repository without Docker, which does not run here.

What can be checked statically is: the compose file's services, volumes and defaults against the
profiles and profile.py; every file the Dockerfiles copy or run exists, is executable where it is
run, and is not left out of the build context by .dockerignore; the launch files are installed
where `ros2 launch` looks; the scripts parse (and pass shellcheck and hadolint where installed);
and the parts of the docker-test scripts that run without Docker behave.
"""

from __future__ import annotations

import fnmatch
import os
import re
import runpy
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from pld_ros.graph import HEARTBEAT_TOPIC, build_graph
from pld_ros.profile import load_profile, resolve_profile_path
from tests.conftest import CONFIG_DIR, ROOT

DOCKER = ROOT / "docker"
DOCKERFILES = (DOCKER / "Dockerfile.robot", DOCKER / "Dockerfile.trainer")
WORKDIR = PurePosixPath("/opt/pld-ros")
"""Where the Dockerfiles put the repository (WORKDIR, then COPY . .)."""
IMAGE_HOME = "/root"
"""The containers run as root: the profiles' "~" paths."""
SCRIPTS = sorted(DOCKER.glob("*.sh"))


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def default_of(value: str) -> str:
    """The default of a compose variable, ``${NAME:-default}`` -> ``default``."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", value)
    assert match, f"{value!r} is not a ${{NAME:-default}} variable"
    return match.group(1)


def mount(volume: str) -> tuple[str, str, str]:
    """A compose volume's (source, target, mode); the source may be a ``${NAME:-default}``."""
    match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(\w+))?", volume)
    assert match, f"{volume!r} is not SOURCE:TARGET[:MODE]"
    return match.group(1), match.group(2), match.group(3) or "rw"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, f"{dockerfile}: a continuation line ends the file"
    pairs = []
    for statement in joined:
        keyword, _, arguments = statement.strip().partition(" ")
        pairs.append((keyword.upper(), arguments.strip()))
    return pairs


def dockerignored(relative: str) -> bool:
    """Whether .dockerignore leaves a path (relative to the build context) out of the context:
    a pattern matches the path or one of its parents; ``**/`` matches any depth."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled here"
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/"):
                tails = ["/".join(prefix.split("/")[i:]) for i in range(prefix.count("/") + 1)]
                if any(fnmatch.fnmatchcase(tail, pattern[3:]) for tail in tails):
                    return True
    return False


def repository_path(image_path: str) -> Path:
    """The repository file behind a path in the image under WORKDIR."""
    relative = PurePosixPath(image_path).relative_to(WORKDIR)
    return ROOT / relative


def test_compose_runs_robot_graph_and_gpu_trainer_on_one_ros_graph() -> None:
    services = compose()["services"]
    assert set(services) == {"robot", "trainer"}
    for name, service in services.items():
        # One ROS graph: host network, and for Fast DDS's shared memory the same /dev/shm and
        # unique process ids.
        assert (service["network_mode"], service["ipc"], service["pid"]) == ("host", "host", "host"), name
        dockerfile = DOCKER / service["build"]["context"] / service["build"]["dockerfile"]
        assert dockerfile.resolve() in [d.resolve() for d in DOCKERFILES], name
    robot, trainer = services["robot"], services["trainer"]
    assert robot["environment"] == trainer["environment"]
    assert robot["environment"]["ROS_DOMAIN_ID"] == "${ROS_DOMAIN_ID:-0}"
    [device] = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in robot, "the robot graph must run without a GPU"


def test_compose_defaults_run_the_simulated_profile_into_the_volumes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = compose()
    robot, trainer = data["services"]["robot"], data["services"]["trainer"]
    command = robot["command"]
    assert command[:3] == ["ros2", "launch", "pld_ros"]
    launch_file = default_of(command[3])
    assert (ROOT / "launch" / launch_file).is_file()
    [profile_argument] = [a for a in command if a.startswith("profile:=")]
    profile_name = default_of(profile_argument.removeprefix("profile:="))
    assert trainer["command"][:2] == ["pld", "trainer"] and default_of(trainer["command"][2]) == profile_name

    # The mounted config folder is where the containers resolve profile names.
    [config_mount] = [v for v in robot["volumes"] if v.startswith("${PLD_CONFIG")]
    source, target, mode = mount(config_mount)
    assert mode == "ro" and robot["environment"]["PLD_CONFIG_DIR"] == target
    config = (DOCKER / default_of(source)).resolve()
    assert config == CONFIG_DIR.resolve()
    monkeypatch.setenv("HOME", IMAGE_HOME)
    profile = load_profile(resolve_profile_path(profile_name, config_dir=config))
    assert profile.simulated, f"{profile_name} must be a simulated profile: the default needs no hardware"

    # Whatever the profile writes lands in a named volume; the trainer's weights (announced as
    # file:// URIs under its directory) are readable by the robot at the same path.
    declared = set(data["volumes"])
    robot_mounts = {target: source for source, target, _ in map(mount, robot["volumes"])}
    trainer_mounts = {target: source for source, target, _ in map(mount, trainer["volumes"])}
    for directory in (
        profile.buffer.directory,
        profile.supervisor.run_directory,
        profile.recording.directory,
        profile.trainer.directory,
    ):
        assert robot_mounts.get(str(directory)) in declared, f"{directory} is not a volume of the robot"
    trainer_directory = str(profile.trainer.directory)
    assert trainer_mounts[trainer_directory] == robot_mounts[trainer_directory]
    assert ("trainer", trainer_directory, "ro") in map(mount, robot["volumes"])


def test_the_fast_dds_profile_the_containers_name_exists() -> None:
    environment = compose()["services"]["robot"]["environment"]
    # Jazzy's Fast DDS 2.x reads FASTRTPS_..., Fast DDS 3 (Kilted) FASTDDS_...: both are set.
    paths = {environment["FASTRTPS_DEFAULT_PROFILES_FILE"], environment["FASTDDS_DEFAULT_PROFILES_FILE"]}
    [path] = paths
    root = ET.parse(repository_path(path)).getroot()
    namespace = {"dds": "http://www.eprosima.com"}
    [participant] = root.findall("dds:profiles/dds:participant", namespace)
    assert participant.get("is_default_profile") == "true"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda d: d.name)
def test_every_file_a_dockerfile_copies_or_runs_is_in_the_build_context(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    froms = [arguments for keyword, arguments in steps if keyword == "FROM"]
    assert froms == ["ros:jazzy-ros-base"], "both images: one ROS distro and DDS on the domain"
    assert ("WORKDIR", str(WORKDIR)) in steps and ("COPY", ". .") in steps
    assert ("STOPSIGNAL", "SIGINT") in steps
    copied: dict[str, str] = {}
    for keyword, arguments in steps:
        if keyword == "COPY":
            *sources, destination = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such file"
                assert source == "." or not dockerignored(source), f"{source} is in .dockerignore"
                copied[destination] = source
    run_text = " ".join(arguments for keyword, arguments in steps if keyword in ("RUN", "ENTRYPOINT", "CMD"))
    referenced = set(re.findall(r"(?<![\w/.-])((?:docker|scripts)/[\w.-]+\.sh)", run_text))
    referenced |= {copied[p] for p in re.findall(r"/tmp/[\w.-]+\.sh", run_text)}
    referenced |= {
        str(repository_path(p).relative_to(ROOT)) for p in re.findall(rf"{WORKDIR}/[\w./-]+\.sh", run_text)
    }
    assert {"docker/install.sh", "docker/entrypoint.sh"} <= referenced
    for script in referenced:
        path = ROOT / script
        assert path.is_file() and os.access(path, os.X_OK), f"{script} must be an executable file"
        assert not dockerignored(script), f"{script} is in .dockerignore"


def test_the_build_inputs_are_in_the_context_and_local_environments_are_not() -> None:
    # What docker/install.sh and scripts/bootstrap.sh read.
    needed = [
        "scripts/bootstrap.sh",
        "scripts/env.sh",
        "scripts/system_deps.sh",
        "requirements/constraints.txt",
    ]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.py") if "__pycache__" not in p.parts]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "launch").glob("*.launch.py")]
    needed += ["config/fastdds_shm.xml", "config/franka_pick_cube_sim.yaml", "src/pld_msgs/CMakeLists.txt"]
    assert not [path for path in needed if dockerignored(path)]
    for local in (".venv", "build", "install", "log", "out", ".git", "src/pld_ros/pld_ros/__pycache__"):
        assert dockerignored(local), f"{local} would be sent to the Docker daemon"


def test_setup_installs_the_launch_files_where_ros2_launch_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict[str, Any] = {}
    monkeypatch.setattr("setuptools.setup", lambda **kwargs: captured.update(kwargs))
    runpy.run_path(str(ROOT / "src" / "pld_ros" / "setup.py"))
    installed = {
        PurePosixPath(destination) / PurePosixPath(source).name
        for destination, sources in captured["data_files"]
        for source in sources
    }
    for launch_file in (ROOT / "launch").glob("*.launch.py"):
        assert PurePosixPath("share/pld_ros/launch", launch_file.name) in installed
    assert PurePosixPath("share/pld_ros/config/fastdds_shm.xml") in installed


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_and_parse(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_shellcheck_and_hadolint_where_installed() -> None:
    tools = {name: shutil.which(name) for name in ("shellcheck", "hadolint")}
    if not any(tools.values()):
        pytest.skip("neither shellcheck nor hadolint is installed")
    if tools["shellcheck"]:
        result = subprocess.run([tools["shellcheck"], *map(str, SCRIPTS)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
    if tools["hadolint"]:
        result = subprocess.run([tools["hadolint"], *map(str, DOCKERFILES)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("launch_file", sorted(p.name for p in (ROOT / "launch").glob("*.launch.py")))
def test_graph_checks_expectations_are_the_launched_graph(launch_file: str) -> None:
    """graph_check.sh's Python part (run as in the image) names the heartbeat, the supervisor's
    status topic and every node the launch file starts with sim:=true."""
    text = (DOCKER / "graph_check.sh").read_text()
    program = re.search(r"<<'EOF'\n(.*?)\nEOF\n", text, re.DOTALL)
    assert program, "graph_check.sh: no embedded Python program"
    profile = launch_file.removesuffix(".launch.py")
    result = subprocess.run(
        [sys.executable, "-", profile], input=program.group(1), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    heartbeat, status, *nodes = result.stdout.splitlines()
    path = resolve_profile_path(profile, sim=True)
    graph = build_graph(load_profile(path, sim=True), path)
    assert heartbeat == HEARTBEAT_TOPIC
    assert status == "/episode/status" and "/supervisor" in nodes
    assert nodes == [spec.fully_qualified_name for spec in graph.nodes]


def test_docker_test_says_so_when_no_docker_daemon_answers(tmp_path: Path) -> None:
    """A stand-in `docker` whose `info` fails, as the client does without a daemon."""
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\necho "Cannot connect to the Docker daemon" >&2\nexit 1\n')
    fake.chmod(0o755)
    environment = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(DOCKER / "test.sh")], capture_output=True, text=True, env=environment, check=False
    )
    assert result.returncode == 1
    assert "no Docker daemon answers" in result.stderr
