"""``pld dataset ...``: datasets for fine-tuning (Stage 3) from recorded bags.

Mounted by the main CLI as ``pld dataset``; until then ``python -m pld_ros.data.dataset_commands``.

- ``convert BAGS... --out PATH --format lerobot|hdf5 [--filter success|all] [--fps N] [--view V]
  [--prompt TEXT] [--cameras a,b] [--arm ARM]``: every episode of the bags (bag directories, .mcap
  files, or directories of bags) into one dataset (:func:`pld_ros.data.convert.convert`), one frame
  per control tick (:mod:`pld_ros.data.bag_episodes`). The dataset's rate is ``--fps``, else the
  control rate recorded in the first bag's metadata (:data:`~pld_ros.data.bag_episodes.DEFAULT_FPS`
  for a bag recorded before the metadata held it); a bag recorded at another rate is not converted
  (reported). Which rate was used, and why, goes to stderr first. Progress goes to stderr (a line
  per bag, and the converter's own), then the report to stdout. A bag that cannot be converted
  (missing topics, no prompt, not a bag) is reported and the others converted; what could not be
  read of a bag (a cut file, a damaged chunk, ticks left out) is printed as a warning and the rest
  converted. Exit code 0 when every bag was converted (warnings or not), 1 when one was not or the
  output failed, 2 for a path that does not exist or is no bag, or bad options.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, get_args

import typer

from pld_ros.data.bag_episodes import DEFAULT_FPS, VIEWS, BagEpisodes
from pld_ros.data.bags import BagWarning
from pld_ros.data.convert import Format, PendingEpisode
from pld_ros.data.convert import convert as convert_episodes
from pld_ros.data.sft_episode import SftEpisode

app = typer.Typer(
    help="Datasets for fine-tuning: convert recorded bags to LeRobot v3.0 or robomimic/LIBERO HDF5.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

FORMATS: tuple[Format, ...] = get_args(Format)
FILTERS = ("success", "all")


@app.callback()
def _group() -> None:
    """Datasets for fine-tuning from recorded bags."""
    # A callback keeps ``convert`` a sub-command, as ``pld dataset convert``, while it is the only one.


def _fail(message: str) -> typer.Exit:
    typer.echo(f"pld dataset: {message}", err=True)
    return typer.Exit(2)


def _is_bag(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".mcap"
    return path.is_dir() and ((path / "metadata.yaml").is_file() or any(path.glob("*.mcap")))


def bag_paths(paths: Sequence[Path]) -> list[Path]:
    """The bags ``paths`` name: each a bag (a directory or an .mcap file), or a directory whose
    sub-directories and .mcap files are bags (in name order). ValueError naming a path that is
    neither."""
    bags: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ValueError(f"{path}: no such file or directory")
        if _is_bag(path):
            bags.append(path)
        elif path.is_dir() and (inner := [p for p in sorted(path.iterdir()) if _is_bag(p)]):
            bags.extend(inner)
        else:
            raise ValueError(
                f"{path}: not a bag, nor a directory of bags (a bag is a directory with metadata.yaml "
                "or .mcap files, or one .mcap file)"
            )
    return list(dict.fromkeys(bags))


Opener = Callable[[Path], BagEpisodes]
"""Opens a bag for conversion with the command's options."""


def _try(open_bag: Opener, bag: Path) -> BagEpisodes | Exception:
    try:
        return open_bag(bag)
    except Exception as exc:  # whatever a broken bag raises is that bag's problem, reported
        return exc


def _dataset_rate(
    bags: Sequence[Path], open_bag: Opener, opened: dict[Path, BagEpisodes | Exception]
) -> tuple[int, str]:
    """The dataset's rate when none is given, and why: the first bag that opens decides (it is
    kept in ``opened``, and so is every bag before it that failed to). Raises a usage error for a
    recorded rate that is not a whole number."""
    for bag in bags:
        source = opened[bag] = _try(open_bag, bag)
        if isinstance(source, Exception):
            continue
        if source.fps_source == "default":
            return DEFAULT_FPS, (
                f"the default: {bag} does not record its control rate (recorded before bags did); "
                "give --fps if it was another"
            )
        if source.fps != round(source.fps):
            raise _fail(
                f"{bag}: control rate {source.fps:g} Hz; a dataset needs whole frames per second: give --fps"
            )
        return round(source.fps), f"the control rate recorded in {bag}"
    return DEFAULT_FPS, "the default: no bag could be opened"


def _pending(
    bags: Sequence[Path], open_bag: Opener, opened: dict[Path, BagEpisodes | Exception], fps: int
) -> Iterator[PendingEpisode]:
    """The episodes of ``bags`` one at a time, named by their bag; a bag that fails (or was recorded
    at another rate than ``fps``) becomes one failing entry (so that the conversion reports it and
    goes on), after what it gave before. ``opened``: bags opened already."""
    for number, bag in enumerate(bags, 1):
        episodes, frames, failed = 0, 0, ""
        source: BagEpisodes | None = None
        try:
            result = opened.pop(bag) if bag in opened else _try(open_bag, bag)
            if isinstance(result, Exception):
                raise result
            source = result
            if source.fps != fps:
                how = "recorded" if source.fps_source == "metadata" else "assumed, its metadata has no rate"
                raise ValueError(
                    f"{bag}: control rate {source.fps:g} Hz ({how}), the dataset's is {fps} Hz: convert it "
                    "into a dataset of its own, or give --fps"
                )
            for episode in source:
                episodes, frames = episodes + 1, frames + len(episode)
                piece = episode.info.extra.get("piece")
                name = f"{bag} episode {episode.info.episode_id}" + (f" piece {piece}" if piece else "")
                yield PendingEpisode(name, _given(episode))
        except Exception as exc:  # whatever a broken bag raises is that bag's problem, reported
            failed = f", then it failed ({type(exc).__name__}, reported below)"
            yield PendingEpisode(str(bag), _failing(exc))
        bar = "#" * round(20 * number / len(bags))
        done = f"{episodes} episode(s), {frames} frames{failed}"
        typer.echo(f"bag [{bar:.<20}] {number}/{len(bags)} {bag.name}: {done}", err=True)
        for problem in source.problems if source is not None else ():
            typer.echo(f"pld dataset: warning: {problem}", err=True)


def _given(episode: SftEpisode) -> Callable[[], SftEpisode]:
    return lambda: episode


def _failing(error: Exception) -> Callable[[], SftEpisode]:
    def load() -> SftEpisode:
        raise error

    return load


@app.command()
def convert(
    bags: Annotated[
        list[Path],
        typer.Argument(help="Bags (directories or .mcap files) or directories of bags.", show_default=False),
    ],
    out: Annotated[
        Path,
        typer.Option(help="The dataset to create: a directory (lerobot) or a .hdf5 file; must not exist."),
    ],
    format: Annotated[str, typer.Option(help=f"Dataset format: {' or '.join(FORMATS)}.")] = "lerobot",
    filter: Annotated[
        str, typer.Option("--filter", help="'success': only successful episodes; 'all': every one.")
    ] = "all",
    fps: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="The control rate the bags were recorded at, Hz: the dataset's rate. Default: the rate "
            f"recorded in the first bag ({DEFAULT_FPS} for bags that do not record it).",
            show_default=False,
        ),
    ] = None,
    view: Annotated[
        str, typer.Option(help=f"Camera images to take: {' or '.join(VIEWS)} (cameras/<name>/<view>).")
    ] = "policy_view",
    prompt: Annotated[
        str | None, typer.Option(help="The task of every episode (default: each bag's recorded prompt).")
    ] = None,
    cameras: Annotated[
        str | None,
        typer.Option(
            help="Cameras in dataset order, comma-separated (default: every one recorded, by name)."
        ),
    ] = None,
    arm: Annotated[
        str | None, typer.Option(help="The arm whose state ticks the control loop (default: the only one).")
    ] = None,
) -> None:
    """Convert recorded bags into one LeRobot v3.0 or HDF5 dataset.

    A frame per control tick with the cameras, the arm state, the executed action and its
    base/residual split; the prompt and the outcome of each episode.
    """
    if format not in FORMATS:
        raise _fail(f"--format must be {' or '.join(FORMATS)}, got {format!r}")
    if filter not in FILTERS:
        raise _fail(f"--filter must be {' or '.join(FILTERS)}, got {filter!r}")
    if view not in VIEWS:
        raise _fail(f"--view must be {' or '.join(VIEWS)}, got {view!r}")
    if out.exists():
        raise _fail(f"{out}: exists; refusing to overwrite it")
    try:
        paths = bag_paths(bags)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    names = [name.strip() for name in cameras.split(",") if name.strip()] if cameras is not None else None

    def open_bag(bag: Path) -> BagEpisodes:
        return BagEpisodes(bag, fps=fps, cameras=names, view=view, arm=arm, prompt=prompt)

    opened: dict[Path, BagEpisodes | Exception] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BagWarning)  # each bag's problems are printed after it
        rate, why = (fps, "--fps") if fps is not None else _dataset_rate(paths, open_bag, opened)
        typer.echo(f"pld dataset: {rate} frames per second: {why}", err=True)
        episodes = _pending(paths, open_bag, opened, rate)
        try:
            report = convert_episodes(
                episodes, out, format, rate, filter_success=filter == "success", progress=sys.stderr
            )
        except OSError as exc:  # the output failed (disk full, ...); nothing of it is left
            typer.echo(f"pld dataset: writing {out} failed, nothing written: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(report.summary())
    raise typer.Exit(1 if report.problems else 0)


if __name__ == "__main__":
    app()
