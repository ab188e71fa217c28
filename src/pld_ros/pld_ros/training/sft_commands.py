"""``pld sft ...``: Stage 3 fine-tuning of the project's policies and their ONNX export.

Mounted by the main CLI as ``pld sft``; until then ``python -m pld_ros.training.sft_commands``.

- ``train DATASETS... --head flow|ar --out DIR [--init WEIGHTS] [--steps N] ...``: fine-tune on
  LeRobot v3.0 directories, HDF5 files or directories of HDF5 files (:mod:`pld_ros.training.sft`);
  ``--resume`` continues the run in DIR.
- ``export CKPT --out model.onnx``: the weights of a run (its directory, or a ``.safetensors`` file)
  as an ONNX base policy (:func:`pld_ros.models.sft_policy.export_onnx`), for the base-policy
  node's ``onnx`` backend.

See ``docs/sft.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Stage 3: fine-tune the flow-matching or token policy on converted datasets; export ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"pld sft: {message}", err=True)
    return typer.Exit(2)


def _size(text: str) -> tuple[int, int]:
    """``128`` or ``96x128`` (height x width)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected N or HxW, e.g. 128 or 96x128") from None
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise typer.BadParameter(f"{text!r}: expected N or HxW with positive sizes")
    return (parts[0], parts[-1])


@app.command()
def train(
    datasets: Annotated[
        list[Path],
        typer.Argument(help="LeRobot v3.0 dataset directories, HDF5 files or directories of HDF5 files."),
    ],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoint, weights, metrics.")],
    head: Annotated[
        str, typer.Option(help="Action head: 'flow' (flow matching, as pi0) or 'ar' (tokens, as OpenVLA).")
    ] = "flow",
    init: Annotated[
        Path | None,
        typer.Option(
            help="Start from these weights: a base policy's ONNX file (e.g. "
            "config/models/franka_pick_cube_base.onnx), or an earlier run's directory or .safetensors."
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option(min=1, help="Optimizer steps in all (a resumed run continues up to it).")
    ] = 5000,
    batch_size: Annotated[int, typer.Option(min=1, help="Frames per step.")] = 32,
    lr: Annotated[
        float, typer.Option(min=0.0, help="Peak learning rate (AdamW, warm-up then cosine).")
    ] = 3e-4,
    chunk_horizon: Annotated[
        int | None, typer.Option(min=1, help="Actions per prediction (default 4, or the init's).")
    ] = None,
    views: Annotated[
        str | None, typer.Option(help="Camera views in input order, comma-separated (default wrist,side).")
    ] = None,
    image_size: Annotated[
        str | None,
        typer.Option(help="Input size N or HxW the views are resized to (default 128, or the init's)."),
    ] = None,
    include_failures: Annotated[
        bool,
        typer.Option("--include-failures", help="Train on failed episodes too (default: successes only)."),
    ] = False,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Episodes held out for validation.")
    ] = 0.1,
    val_every: Annotated[int, typer.Option(min=1, help="Steps between validation losses.")] = 500,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 1000,
    log_every: Annotated[int, typer.Option(min=1, help="Steps between loss lines.")] = 100,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split, initialization and batches.")] = 0,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 2,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in OUT from its checkpoint: same datasets, its settings kept "
            "except --steps.",
        ),
    ] = False,
) -> None:
    """Fine-tune a policy on converted datasets (Stage 3's distillation); weights in OUT."""
    # Imported here: torch would slow every other `pld` command down by seconds.
    from pld_ros.models.sft_policy import HEADS
    from pld_ros.training.sft import SftTrainingConfig, train_sft

    if head not in HEADS:
        raise _fail(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    changes: dict[str, object] = {}
    if chunk_horizon is not None:
        changes["chunk_horizon"] = chunk_horizon
    if views is not None:
        changes["views"] = tuple(view.strip() for view in views.split(",") if view.strip())
    if image_size is not None:
        changes["image_size"] = _size(image_size)
    start = time.monotonic()
    try:
        config = SftTrainingConfig(
            steps=steps,
            batch_size=batch_size,
            learning_rate=lr,
            min_learning_rate=min(lr, SftTrainingConfig.min_learning_rate),
            include_failures=include_failures,
            val_fraction=val_fraction,
            val_every=val_every,
            checkpoint_every=checkpoint_every,
            log_every=log_every,
            seed=seed,
            threads=threads,
        )
        result = train_sft(
            datasets,
            out,
            head,
            config,
            policy_changes=changes,
            init=init,
            resume=resume,
            log=typer.echo,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    validation = "" if result.val_loss is None else f", validation loss {result.val_loss:.4f}"
    typer.echo(
        f"done: {result.steps} steps, loss {result.final_loss:.4f}{validation} "
        f"({time.monotonic() - start:.0f} s); weights {result.weights}"
    )


@app.command()
def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="A run directory (from train) or a .safetensors weights file.")
    ],
    out: Annotated[Path, typer.Option(help="ONNX file to write (the base-policy node's onnx backend).")],
    best: Annotated[
        bool, typer.Option("--best", help="A run directory's best validation weights instead of its newest.")
    ] = False,
) -> None:
    """Export a fine-tuned policy as an ONNX base policy (inputs images and proprio, output actions)."""
    from pld_ros.models.sft_policy import export_onnx, load_policy
    from pld_ros.training.sft import weights_file

    try:
        policy = load_policy(weights_file(checkpoint, best))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    export_onnx(policy, out)
    config = policy.config
    typer.echo(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {policy.head} head, views "
        f"{','.join(config.views)} at {config.image_size[0]}x{config.image_size[1]}, "
        f"chunks of {config.chunk_horizon} (set policies.base.chunk_horizon to at most that)"
    )


if __name__ == "__main__":
    app()
