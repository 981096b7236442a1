"""The one command-line shape of every package: `train`, `sample` and, for two-stage models, `train-tokenizer`, with
the same options for the same things, and the command bodies they share.

```
def build_parser():
    parser, commands = command_parser("tool", __doc__)
    train = add_command(commands, "train", run_train, "train a model")
    add_dataset_arguments(train)                          # --data FOLDER | --shapes N
    add_training_arguments(train, output_dir="results", steps=10_000, lr=3e-4)
    sample = add_command(commands, "sample", run_sample, "generate videos", aliases=("generate",))
    add_sample_arguments(sample)                          # --model, --text, --num-frames, --cond-scale, ...
    return parser

def run_sample(args):
    model = load_model(args.model, MyModel, device=resolve_device(args.device))
    return sample_and_write(model, args)                  # model.sample(...) through the generation protocol

def main(argv=None):
    return run_cli(build_parser(), argv, logger)
```
Training commands: `--data`, `--output-dir` (alias `--results-folder`), `--steps`, `--batch-size`, `--lr`, `--seed`,
`--resume`, `--device` (and `--cpu`), `--mixed-precision`, `--grad-accum-every`, `--save-every`, `--sample-every`,
`--sample-text`. Sampling commands: `--model`, `--text`, `--num-frames`, `--cond-scale`, `--steps`,
`--batch-size`, `--format` (gif, mp4, png), `--out`, `--fps`, `--seed`, `--device`. Nothing here ever prompts;
models are loaded through the registry of loadable classes only (`synthesis_core.checkpoint`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from synthesis_core.shapes import ShapesVideoDataset

__all__ = [
    "COMMON_TRAINING_OPTIONS",
    "COMMON_SAMPLING_OPTIONS",
    "OUTPUT_FORMATS",
    "command_parser",
    "add_command",
    "int_list",
    "add_dataset_arguments",
    "add_training_arguments",
    "add_sample_arguments",
    "add_output_arguments",
    "training_kwargs",
    "shapes_dataset",
    "resolve_device",
    "make_generator",
    "load_model",
    "replace_text_encoder",
    "sample_videos",
    "sample_and_write",
    "output_path",
    "write_video",
    "run_cli",
]

# the options every training / sampling command of every package has (tests/test_cli_shape.py checks them)
COMMON_TRAINING_OPTIONS = (
    "--data",
    "--output-dir",
    "--steps",
    "--batch-size",
    "--lr",
    "--seed",
    "--resume",
    "--device",
)
COMMON_SAMPLING_OPTIONS = (
    "--model",
    "--text",
    "--num-frames",
    "--cond-scale",
    "--steps",
    "--batch-size",
    "--format",
    "--out",
    "--seed",
    "--device",
)
OUTPUT_FORMATS = ("gif", "mp4", "png")

# the errors a user causes (bad option values, missing files): reported in one line, exit status 2
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, FileNotFoundError)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# parsers
# ----------------------------------------------------------------------------------------------------------------


def command_parser(prog: str, doc: str | None) -> tuple[argparse.ArgumentParser, Any]:
    """A parser named `prog` described by the first paragraph of `doc`, and its (required) sub-commands."""
    description = doc.split("\n\n")[0] if doc else None
    parser = argparse.ArgumentParser(prog=prog, description=description)
    return parser, parser.add_subparsers(dest="command", required=True)


def int_list(text: str) -> tuple[int, ...]:
    """An option value `1,2,4` -> `(1, 2, 4)` (empty -> `()`), for argparse's `type=`."""
    if not text.strip():
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_command(
    commands: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, *, aliases: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """A sub-command `name` (also reachable by its old `aliases`) that runs `func(args) -> exit status`."""
    parser = commands.add_parser(name, help=help, aliases=list(aliases))
    parser.set_defaults(func=func)
    return parser


def add_dataset_arguments(
    parser: argparse.ArgumentParser,
    data_help: str = "folder of training data",
    *,
    aliases: Sequence[str] = (),
    required: bool = True,
) -> None:
    """A choice between `--data FOLDER` (also reachable as `aliases`, e.g. make-a-video's `--videos`) and
    `--shapes N` (the core's built-in captioned shapes videos, made on the fly); required unless `required=False`
    (a command with other sources of data)."""
    data = parser.add_mutually_exclusive_group(required=required)
    data.add_argument("--data", *aliases, dest="data", default=None, help=data_help)
    data.add_argument("--shapes", type=int, default=None, help="train on N built-in captioned shapes videos instead")


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    output_dir: str,
    batch_size: int = 4,
    steps: int | None = 10_000,
    lr: float = 3e-4,
    save_every: int | None = 1000,
    sample_every: int | None = 500,
    sample_text: bool = True,
    aliases: Mapping[str, Sequence[str]] | None = None,
    from_config: bool = False,
) -> None:
    """The options of every training command: batch, steps, learning rate, where results go, resuming, device,
    seed, mixed precision, accumulation, periodic checkpoints / samples and their prompts. `save_every=None` /
    `sample_every=None` / `sample_text=False` leave those options out (a trainer without them); `aliases` adds
    other spellings of an option (`{'--sample-every': ('--sample_every',)}`). With `from_config=True` every
    default is None: the values come from a config file unless given."""
    add = _option_adder(parser, aliases)

    def default(value: Any) -> Any:
        return None if from_config else value

    def shown(value: Any) -> str:
        return "from the config" if from_config else str(value)

    add(
        "--output-dir",
        "--results-folder",
        dest="output_dir",
        default=default(output_dir),
        help=f"where checkpoints, samples and the trained model go [{shown(output_dir)}]",
    )
    add("--steps", type=int, default=default(steps), help=f"optimizer steps to train for [{shown(steps)}]")
    add("--batch-size", type=int, default=default(batch_size), help=f"[{shown(batch_size)}]")
    add("--lr", type=float, default=default(lr), help=f"learning rate [{shown(lr)}]")
    add("--grad-accum-every", type=int, default=default(1), help=f"micro-batches per optimizer step [{shown(1)}]")
    add("--seed", type=int, default=None, help="seeds the weights, the data order and the noise")
    add("--resume", default=None, help="'latest' (the newest checkpoint in --output-dir) or a path")
    add("--device", default=None, help="'cpu' or 'cuda' [cuda when available, else cpu]")
    add("--cpu", dest="device", action="store_const", const="cpu", help="the same as --device cpu")
    add("--mixed-precision", choices=("no", "bf16", "fp16"), default=default("no"), help=f"[{shown('no')}]")
    if save_every is not None:
        add(
            "--save-every",
            "--save-model-every",
            dest="save_every",
            type=int,
            default=default(save_every),
            help=f"steps between checkpoints [{shown(save_every)}]",
        )
    if sample_every is not None:
        add(
            "--sample-every",
            "--save-results-every",
            dest="sample_every",
            type=int,
            default=sample_every,
            help=f"steps between samples [{sample_every}]",
        )
    if sample_text:
        add("--sample-text", action="append", default=None, help="prompt of the periodic samples (repeat for several)")


def add_sample_arguments(
    parser: argparse.ArgumentParser,
    *,
    model_help: str = "folder written by train",
    cond_scale: float = 3.0,
    num_frames: int | None = None,
    fps: float = 8.0,
    text_encoder: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """The options of every sampling command: the model folder, prompts, frames, guidance, steps, batch size,
    output, device and seed. `text_encoder=True` adds `--text-encoder` (another copy of the model's text encoder,
    e.g. a local folder), for models that encode their own prompts; `aliases` adds other spellings of an option."""
    add = _option_adder(parser, aliases)
    add("--model", required=True, help=model_help)
    add("--text", action="append", default=None, help="prompt (repeat for a batch)")
    add(
        "--batch-size",
        type=int,
        default=None,
        help="videos to sample [one per --text; 1 without prompts; one --text is repeated]",
    )
    add("--num-frames", type=int, default=num_frames, help=f"frames to generate [{num_frames or 'the trained number'}]")
    add("--cond-scale", type=float, default=cond_scale, help=f"classifier-free guidance scale [{cond_scale}]")
    add("--steps", "--sample-steps", dest="steps", type=int, default=None, help="sampling steps [the model's default]")
    if text_encoder:
        add("--text-encoder", default=None, help="override the text encoder (e.g. a local folder)")
    add_output_arguments(parser, fps=fps, aliases=aliases)


def add_output_arguments(
    parser: argparse.ArgumentParser,
    *,
    out: str | None = None,
    fps: float = 8.0,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Where and how videos are written (`--out`, `--format`, `--fps`), the device and the seed."""
    add = _option_adder(parser, aliases)
    add("--out", default=out, help="output file (.gif, .mp4, .png frame sheet) or folder of frames [sample.<format>]")
    add("--format", choices=OUTPUT_FORMATS, default=None, help="output format [from the --out suffix, else gif]")
    add("--fps", type=float, default=fps, help=f"frames per second of gif/mp4 output [{fps}]")
    add("--device", default=None, help="'cpu' or 'cuda' [cuda when available, else cpu]")
    add("--seed", type=int, default=None, help="makes the samples reproducible")


def _option_adder(parser: argparse.ArgumentParser, aliases: Mapping[str, Sequence[str]] | None):
    """`parser.add_argument` that also gives an option the other spellings `aliases[its first name]`."""
    aliases = dict(aliases or {})

    def add(name: str, *more: str, **kwargs: Any) -> argparse.Action:
        return parser.add_argument(name, *more, *aliases.pop(name, ()), **kwargs)

    return add


# ----------------------------------------------------------------------------------------------------------------
# the command bodies the packages share
# ----------------------------------------------------------------------------------------------------------------


def _cpu_choice(device: str | None) -> bool | None:
    if device is None:
        return None
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda', got {device!r}")
    return kind == "cpu"


def training_kwargs(
    args: argparse.Namespace, *, save_every: str = "save_every", sample_every: str = "sample_every"
) -> dict[str, Any]:
    """Keyword arguments of a package trainer from the options of `add_training_arguments`; `save_every` and
    `sample_every` name the trainer's keywords for those periods."""
    kwargs: dict[str, Any] = dict(
        batch_size=args.batch_size,
        num_train_steps=args.steps,
        lr=args.lr,
        grad_accum_every=args.grad_accum_every,
        results_folder=args.output_dir,
        mixed_precision=args.mixed_precision,
        cpu=_cpu_choice(args.device),
        seed=args.seed,
        resume=args.resume,
    )
    if hasattr(args, "save_every"):
        kwargs[save_every] = args.save_every
    if hasattr(args, "sample_every"):
        kwargs[sample_every] = args.sample_every
    if hasattr(args, "sample_text"):
        kwargs["sample_texts"] = args.sample_text
    return kwargs


def shapes_dataset(
    args: argparse.Namespace, *, image_size: int, num_frames: int = 8, images: bool = False, count: int | None = None
) -> ShapesVideoDataset:
    """`--shapes N` (or `count`) captioned shapes videos (`images=True`: images) made on the fly, seeded by
    `--seed`: `(pixels, caption)` items."""
    from synthesis_core.shapes import ShapesVideoDataset

    return ShapesVideoDataset(
        count if count is not None else args.shapes,
        image_size=image_size,
        num_frames=num_frames,
        images=images,
        seed=args.seed or 0,
    )


def resolve_device(device: str | None) -> str:
    """`device` as given, else 'cuda' when a GPU is available, else 'cpu'."""
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_generator(seed: int | None, device: str | torch.device) -> torch.Generator | None:
    """A generator on `device` seeded with `seed` (None without a seed)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def load_model(
    folder: str | Path,
    expected: type | tuple[type, ...],
    *,
    device: str | torch.device = "cpu",
    option: str = "--model",
    refuse: type | tuple[type, ...] = (),
) -> Any:
    """The model `save_pretrained` wrote to `folder`, loaded through the registry of loadable classes (nothing
    else is imported or built), on `device`; a ValueError naming `option` when it is not an `expected` (or is a
    `refuse`d subclass)."""
    from synthesis_core.checkpoint import load_model_from_folder

    model = load_model_from_folder(folder, map_location=device)
    if not isinstance(model, expected) or (refuse and isinstance(model, refuse)):
        names = expected.__name__ if isinstance(expected, type) else " or ".join(c.__name__ for c in expected)
        raise ValueError(f"{option}: {folder} holds a {type(model).__name__}, not a {names}")
    return model


def replace_text_encoder(owner: Any, name: str | None, *, option: str = "--text-encoder") -> None:
    """Points the text encoder of `owner` (the module holding it as `.text_encoder`) at `name` (a hub name or a
    local folder of the same encoder), keeping its `max_length`; nothing when `name` is None."""
    if name is None:
        return
    from synthesis_core.text import TextEncoder

    current = getattr(owner, "text_encoder", None)
    if current is None:
        raise ValueError(f"{option}: this model encodes no text (it was trained without a text encoder)")
    owner.text_encoder = TextEncoder(name, max_length=current.max_length)


def sample_videos(model: Any, args: argparse.Namespace, **extra: Any) -> Tensor:
    """`model.sample(...)` through the generation protocol with the options of `add_sample_arguments` (those
    given): the prompts (one `--text` repeated to `--batch-size`), `--batch-size` videos without them,
    `--num-frames`, `--cond-scale`, `--steps` and `--seed`; `extra` keywords (passed when not None) add to or
    replace these, e.g. token ids as `texts`. Returns `(b, c, f, h, w)` videos in [0, 1]."""
    from synthesis_core.protocol import as_videos

    device = next(model.parameters()).device
    kwargs: dict[str, Any] = dict(
        texts=args.text or None, cond_scale=args.cond_scale, generator=make_generator(args.seed, device)
    )
    batch_size = args.batch_size if args.batch_size is not None or args.text else 1
    for name, value in (
        ("batch_size", batch_size),
        ("num_frames", args.num_frames),
        ("steps", args.steps),
        *extra.items(),
    ):
        if value is not None:
            kwargs[name] = value
    return as_videos(model.sample(**kwargs))


def output_path(args: argparse.Namespace, *, stem: str = "sample") -> Path:
    """Where `--out` / `--format` say the videos go: `--out` as given (its suffix must agree with `--format`),
    else `<stem>.<format>` (gif by default)."""
    fmt = args.format
    if args.out is None:
        return Path(f"{stem}.{fmt or 'gif'}")
    out = Path(args.out)
    if fmt is not None:
        if not out.suffix:
            return out.with_suffix(f".{fmt}")
        if out.suffix.lower() != f".{fmt}":
            raise ValueError(f"--format: {fmt} does not match the suffix of --out {out}")
    return out


def sample_and_write(model: Any, args: argparse.Namespace, *, fps: float | None = None, **extra: Any) -> int:
    """The `sample` command: `sample_videos(model, args, **extra)` written to `output_path(args)`; exit status 0."""
    videos = sample_videos(model, args, **extra)
    write_video(videos, output_path(args), fps=args.fps if fps is None else fps)
    return 0


def write_video(videos: Tensor, out: str | Path, *, fps: float = 8.0) -> Path:
    """Writes videos `(b, c, f, h, w)` in [0, 1] to `out` (gif/mp4/png sheet/folder by its suffix; `save_video`
    creates the parent folder); logs and returns the path."""
    from synthesis_core.video import save_video

    if not isinstance(videos, Tensor) or videos.ndim != 5:
        raise ValueError(f"videos: expected a (b, c, f, h, w) tensor, got {tuple(getattr(videos, 'shape', ()))}")
    out = save_video(videos.detach().float().cpu(), out, fps=fps)
    logger.info("wrote %s (%d videos of %d frames)", out, videos.shape[0], videos.shape[2])
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
