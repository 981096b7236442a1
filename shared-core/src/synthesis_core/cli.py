"""Scaffolding shared by the packages' command lines: common options, device choice, writing videos and a `main`
that sets up logging and turns bad input into one clear error line and exit status 2 (no traceback).

```
def build_parser():
    parser = argparse.ArgumentParser(prog="tool")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train")
    add_dataset_arguments(train)                       # --data FOLDER | --shapes N
    add_training_arguments(train, results_folder="results", steps=10_000, lr=3e-4)
    train.set_defaults(func=run_train)                 # run_train(args) -> exit status
    return parser

def main(argv=None):
    return run_cli(build_parser(), argv, logger)
```
Nothing here ever prompts; option names and defaults are those every package's README documents.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "add_dataset_arguments",
    "add_training_arguments",
    "add_output_arguments",
    "training_kwargs",
    "resolve_device",
    "write_video",
    "run_cli",
]

# the errors a user causes (bad option values, missing files): reported in one line, exit status 2
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, FileNotFoundError)


def add_dataset_arguments(parser: argparse.ArgumentParser, data_help: str = "folder of training data") -> None:
    """A required choice between `--data FOLDER` and `--shapes N` (the core's built-in captioned shapes videos)."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help=data_help)
    data.add_argument("--shapes", type=int, help="train on N built-in captioned shapes videos instead")


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    results_folder: str,
    batch_size: int = 4,
    steps: int = 10_000,
    lr: float = 3e-4,
    save_results_every: int | None = 500,
    save_model_every: int | None = 1000,
) -> None:
    """The options of every training command: batch, steps, learning rate, periodic samples / checkpoints, where
    results go, resuming, mixed precision, device and seed. Pass `save_*_every=None` to leave an option out."""
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--grad-accum-every", type=int, default=1)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--lr", type=float, default=lr)
    if save_results_every is not None:
        parser.add_argument("--save-results-every", type=int, default=save_results_every)
    if save_model_every is not None:
        parser.add_argument("--save-model-every", type=int, default=save_model_every)
    parser.add_argument("--results-folder", default=results_folder)
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint path")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--seed", type=int, default=None)


def add_output_arguments(parser: argparse.ArgumentParser, *, out: str = "sample.gif", fps: float = 8.0) -> None:
    """The options of every sampling command: frame rate, device, seed and the output path."""
    parser.add_argument("--fps", type=float, default=fps)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=out, help=".gif, .mp4, .png (frame sheet) or a folder")


def training_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for a package trainer from the options of `add_training_arguments` (those present)."""
    kwargs: dict[str, Any] = dict(batch_size=args.batch_size, num_train_steps=args.steps, lr=args.lr,
                                  grad_accum_every=args.grad_accum_every, results_folder=args.results_folder,
                                  mixed_precision=args.mixed_precision, cpu=True if args.cpu else None,
                                  seed=args.seed)
    for name in ("save_results_every", "save_model_every"):
        if hasattr(args, name):
            kwargs[name] = getattr(args, name)
    return kwargs


def resolve_device(device: str | None) -> str:
    """`device` as given, else 'cuda' when a GPU is available, else 'cpu'."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def write_video(videos: Tensor, out: str | Path, *, fps: float = 8.0) -> Path:
    """Writes videos `(b, c, f, h, w)` in [0, 1] to `out` (gif/mp4/png sheet/folder by its suffix; `save_video`
    creates the parent folder); logs and returns the path."""
    from synthesis_core.video import save_video

    if not isinstance(videos, Tensor) or videos.ndim != 5:
        raise ValueError(f"videos: expected a (b, c, f, h, w) tensor, got {tuple(getattr(videos, 'shape', ()))}")
    out = save_video(videos.detach().float().cpu(), out, fps=fps)
    logging.getLogger(__name__).info("wrote %s (%d videos of %d frames)", out, videos.shape[0], videos.shape[2])
    return out


def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None, logger: logging.Logger) -> int:
    """Sets up logging, parses `argv`, runs the chosen command's `func(args)` and returns its exit status; a bad
    input (ValueError, TypeError, FileNotFoundError) is logged in one line and gives exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        logger.error("%s", err)
        logger.debug("traceback", exc_info=True)
        return 2
