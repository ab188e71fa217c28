"""The ``pld`` command line: everything a robot-learning team runs by hand, in one place."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from pld_ros import __version__
from pld_ros.collection import write_collection_profile
from pld_ros.core.episode_log import EPISODES_FILE, PLOT_FILE, read_episodes, summarize_run
from pld_ros.core.loop_stats import format_loop_summary, plot_loop, summarize_loop
from pld_ros.core.report import ReportError, write_report
from pld_ros.data.bag_commands import app as bag_app
from pld_ros.data.dataset_commands import app as dataset_app
from pld_ros.graph import Graph, build_graph
from pld_ros.launcher import GraphRunner, LaunchError, forward_signals, process_specs
from pld_ros.profile import ProfileError, default_config_dir, load_profile, resolve_profile_path
from pld_ros.training.commands import app as train_app
from pld_ros.training.reward_commands import app as reward_app
from pld_ros.training.sft_commands import app as sft_app

app = typer.Typer(
    name="pld",
    help="Run PLD (Probe, Learn, Distill) on real and simulated robot arms with ROS 2.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
profile_app = typer.Typer(help="Inspect and validate robot profiles (config/*.yaml).", no_args_is_help=True)
app.add_typer(profile_app, name="profile")
app.add_typer(train_app, name="train")
runs_app = typer.Typer(
    help="Episode logs of supervisor runs: summaries and outcome plots.", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")
app.add_typer(bag_app, name="bag")
app.add_typer(dataset_app, name="dataset")
app.add_typer(sft_app, name="sft")
app.add_typer(reward_app, name="reward")

ProfileArg = Annotated[
    str, typer.Argument(help="Profile name in config/ (e.g. franka_pick_cube) or a path to a YAML file.")
]
SimOption = Annotated[bool, typer.Option("--sim", help="Use the simulated variant (<name>_sim.yaml).")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"pld: {message}", err=True)
    return typer.Exit(code)


def _graph(profile: str, sim: bool, episodes: int | None = None) -> Graph:
    try:
        path = resolve_profile_path(profile, sim=sim)
        return build_graph(load_profile(path, sim=sim), path, episodes=episodes)
    except (ProfileError, ValueError) as exc:
        raise _fail(str(exc)) from None


def _run(graph: Graph, duration: float | None) -> int:
    try:
        with process_specs(graph) as specs:
            runner = GraphRunner(specs)
            runner.log(f"profile {graph.profile.name} ({graph.profile_path}): {len(specs)} node(s)")
            with forward_signals(runner):
                report = runner.run(duration=duration)
    except LaunchError as exc:
        raise _fail(str(exc)) from None
    for failure in report.failed:
        typer.echo(f"pld: node '{failure.name}' {failure.cause}", err=True)
    return report.exit_code


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pld-ros {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Run PLD (Probe, Learn, Distill) on real and simulated robot arms with ROS 2."""


@app.command()
def launch(
    profile: ProfileArg,
    sim: SimOption = False,
    duration: Annotated[
        float | None, typer.Option(min=0.0, help="Stop after this many seconds (default: run until Ctrl-C).")
    ] = None,
) -> None:
    """Start every node of a profile's graph as its own process (like `ros2 launch`).

    Logs are prefixed with the node name. Ctrl-C or SIGTERM stops all nodes (SIGINT, then
    SIGTERM, then SIGKILL). A node that dies is reported with its exit code and last output,
    and stops the graph unless the profile marks it for respawn; the exit code is then 1.
    """
    raise typer.Exit(_run(_graph(profile, sim), duration))


@app.command()
def demo(
    profile: Annotated[str, typer.Argument(help="Profile name or path; its simulated variant runs.")] = (
        "franka_pick_cube"
    ),
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to run before stopping.")] = 30,
) -> None:
    """Run episodes unattended on simulated hardware, then print the summary and plot the outcomes.

    The profile's simulated graph runs: the world, the arm driver, the base policy probing, the
    residual taking over, the success signal deciding, the supervisor resetting between episodes.
    """
    graph = _graph(profile, sim=True, episodes=episodes)
    started = time.time()
    code = _run(graph, duration=None)
    runs = graph.profile.supervisor.run_directory
    # The supervisor names its run directory after the profile and its start time.
    candidates = [
        d for d in runs.glob(f"{graph.profile.name}-*") if d.is_dir() and d.stat().st_mtime >= started - 1.0
    ]
    if not candidates:
        raise _fail(f"no run directory of this run under {runs}", code or 1)
    run_dir = max(candidates, key=lambda d: d.stat().st_mtime)
    if not (run_dir / EPISODES_FILE).is_file():
        raise _fail(f"no episode ended in this run ({run_dir})", code or 1)
    plot = run_dir / PLOT_FILE
    typer.echo(summarize_run(run_dir, plot=plot))
    if graph.profile.supervisor.episode_scope == "stage":
        typer.echo(format_loop_summary(summarize_loop(read_episodes(run_dir))))
    typer.echo(f"episode log: {run_dir / EPISODES_FILE}\noutcome plot: {plot}")
    raise typer.Exit(code)


@app.command()
def collect(
    profile: ProfileArg,
    weights: Annotated[
        Path,
        typer.Option(help="The Stage 1 specialist's weights (a safetensors file the trainer published)."),
    ],
    successes: Annotated[int, typer.Option(min=1, help="Successful episodes to collect, then stop.")] = 200,
    max_probe_steps: Annotated[
        int | None, typer.Option(min=0, help="K of k ~ U[0, K] base steps (default: the profile's).")
    ] = None,
    sim: SimOption = False,
) -> None:
    """Stage 2: collect successful probe-then-takeover episodes with a trained specialist.

    The profile's graph runs with the specialist's weights fixed, no warm-up and no trainer, until
    the target count of successes. The overlay profile that says so is written next to the run
    logs (supervisor.run_directory); every episode is stored with its outcome, and
    `pld dataset convert --filter success` turns the successful ones into SFT data.
    """
    try:
        path = resolve_profile_path(profile, sim=sim)
        base = load_profile(path, sim=sim)
        overlay, collecting = write_collection_profile(
            path,
            weights,
            successes,
            base.supervisor.run_directory,
            f"{base.name}-collect-{time.strftime('%Y%m%dT%H%M%S')}",
            max_probe_steps,
        )
        graph = build_graph(collecting, overlay)
    except (ProfileError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"collection profile: {overlay}")
    raise typer.Exit(_run(graph, duration=None))


@runs_app.command("summary")
def runs_summary(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds episodes.jsonl).")],
    plot: Annotated[Path | None, typer.Option(help="Also write the outcome plot (PNG) here.")] = None,
) -> None:
    """Print a run's summary table (episodes, success rate, mean length, aborted)."""
    if not (run_dir / EPISODES_FILE).is_file():
        raise _fail(f"{run_dir}: no {EPISODES_FILE} (not a run directory)")
    typer.echo(summarize_run(run_dir, plot=plot))


@runs_app.command("loop")
def runs_loop(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holds episodes.jsonl).")],
    plot: Annotated[Path | None, typer.Option(help="Also write the loop's timeline plot (PNG) here.")] = None,
) -> None:
    """Print a long-horizon loop's statistics: cycles, per-stage success and duration, recoveries,
    why stages failed, human interventions and the longest time without one."""
    if not (run_dir / EPISODES_FILE).is_file():
        raise _fail(f"{run_dir}: no {EPISODES_FILE} (not a run directory)")
    try:
        records = read_episodes(run_dir)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if plot is not None:
        plot_loop(records, plot)
    typer.echo(format_loop_summary(summarize_loop(records)))


@app.command()
def status(
    namespace: Annotated[
        str, typer.Option(help="The graph's namespace (a robot's, e.g. /robot1); default: the root.")
    ] = "",
    once: Annotated[
        bool, typer.Option("--once", help="Listen --wait seconds, print one snapshot and exit.")
    ] = False,
    wait: Annotated[float, typer.Option(min=0.1, help="Seconds to listen before --once prints.")] = 3.0,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between two redraws.")] = 1.0,
) -> None:
    """Show the running graph in this terminal (no display needed), redrawn until Ctrl-C.

    Episode, phase and stage, the run's success rate, the trainer (weights version, updates/s,
    buffer sizes, losses), a long-horizon loop's statistics, each node's loop timing, which nodes
    beat, and every /diagnostics status that is not OK, worst first. With --once the exit code is
    1 when nothing at all was heard (no graph on this ROS_DOMAIN_ID).
    """
    from pld_ros.nodes.status_monitor import run_status

    if namespace and not namespace.startswith("/"):
        namespace = "/" + namespace
    raise typer.Exit(run_status(namespace, once=once, wait=wait, interval=interval, echo=typer.echo))


@app.command()
def report(
    directories: Annotated[
        list[Path],
        typer.Argument(help="Run directories (episodes.jsonl) and/or trainer directories (metrics.jsonl)."),
    ],
    output: Annotated[
        Path | None, typer.Option(help="Write the plots here (default: next to each log).")
    ] = None,
) -> None:
    """Plot a run's episode outcomes and a trainer's training curves (PNG), and print summaries.

    From a run directory: outcomes.png (each outcome, the rolling success rate) and the summary
    table. From a trainer directory (trainer.directory): training.png (critic and actor loss, mean
    Q, temperature and xi against updates; updates/s and buffer sizes against time).
    """
    try:
        lines = write_report(directories, output)
    except ReportError as exc:
        raise _fail(str(exc)) from None
    typer.echo("\n".join(lines))


@app.command()
def teleop(
    profile: ProfileArg,
    sim: SimOption = False,
    device: Annotated[
        str | None,
        typer.Option(
            help="keyboard, spacemouse, or sim (a scripted SpaceMouse); default: the profile's teleop.device."
        ),
    ] = None,
) -> None:
    """Take the arm over by hand from this terminal (keyboard or SpaceMouse) until Ctrl-C.

    Start the graph (`pld launch`) in another terminal. While you act, your steps replace the
    policies' (through the same safety layer) and are recorded as HUMAN; the policies get the arm
    back teleop.hold_time after you stop.
    """
    try:
        path = resolve_profile_path(profile, sim=sim)
        load_profile(path, sim=sim)
    except ProfileError as exc:
        raise _fail(str(exc)) from None
    # The node runs in this process, in the foreground: the keyboard needs this terminal.
    from pld_ros.nodes.runner import run_node
    from pld_ros.nodes.teleop import TeleopNode

    ros_args = ["--ros-args", "-p", f"profile:={path}"]
    if device:
        ros_args += ["-p", f"device:={device}"]
    raise typer.Exit(run_node(TeleopNode, ["pld", *ros_args]))


@app.command()
def trainer(
    profile: ProfileArg,
    sim: SimOption = False,
    robot: Annotated[
        list[str] | None,
        typer.Option(
            help="Namespace of a robot graph to learn from (repeat for several; default: the trainer's own)."
        ),
    ] = None,
    weights_url: Annotated[
        str, typer.Option(help="URL under which robots fetch the weights folder (default: file://).")
    ] = "",
) -> None:
    """Run Stage 1's trainer for a profile's robots, here in the foreground, until Ctrl-C.

    On the robot's computer or a GPU box on the same ROS domain. It learns from the episodes the
    robots' replay buffers stream, announces versioned weights to their residual nodes and resumes
    from its directory (trainer.directory) after a restart.
    """
    try:
        path = resolve_profile_path(profile, sim=sim)
        load_profile(path, sim=sim)
    except ProfileError as exc:
        raise _fail(str(exc)) from None
    from pld_ros.nodes.runner import run_node
    from pld_ros.nodes.trainer import TrainerNode

    ros_args = ["--ros-args", "-p", f"profile:={path}", "-p", f"weights_url:={weights_url}"]
    if robot:
        ros_args += ["-p", f"robots:=[{','.join(repr(r) for r in robot)}]"]
    raise typer.Exit(run_node(TrainerNode, ["pld", *ros_args]))


@profile_app.command("list")
def profile_list() -> None:
    """List the profiles shipped in config/."""
    for path in sorted(default_config_dir().glob("*.yaml")):
        typer.echo(path.stem)


@profile_app.command("check")
def profile_check(profile: ProfileArg, sim: SimOption = False) -> None:
    """Validate a profile; print every problem with its field, value and reason."""
    graph = _graph(profile, sim)
    typer.echo(f"{graph.profile_path}: ok ({graph.profile.name}, {len(graph.nodes)} node(s))")


@profile_app.command("graph")
def profile_graph(profile: ProfileArg, sim: SimOption = False) -> None:
    """Print the node graph a profile starts: names, executables, namespaces, parameters."""
    graph = _graph(profile, sim)
    for node in graph.nodes:
        respawn = ", respawn" if node.respawn else ""
        typer.echo(f"{node.fully_qualified_name}  ({node.package}/{node.executable}{respawn})")
        for key, value in sorted(node.parameters.items()):
            typer.echo(f"    {key}: {value!r}")


def main() -> None:
    app(prog_name="pld")


if __name__ == "__main__":
    main()
