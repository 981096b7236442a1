"""The `imagen` command: write a config, train a unet from it, sample from a checkpoint.

```
imagen config --path ./imagen_config.json             # a config to edit (cascade, trainer, dataset)
imagen train --config ./imagen_config.json --unet 1 --epoches 10 --valid 1 --text "a red car"
imagen sample --model ./checkpoints/checkpoint-00001000.safetensors --cond-scale 5 "a red car"
```
`train` resumes from the newest checkpoint in the config's `checkpoint_path` (or `--resume PATH`) and saves there
every `checkpoint_every` updates and at the end. `--epoches N` trains N passes over the training data (the
published CLI counted batches under that name; `--steps N` counts optimizer steps); `--valid N` validates every N
epochs. The options every package's command line shares (`synthesis_core.cli`: `--data`, `--output-dir`,
`--steps`, `--batch-size`, `--lr`, `--seed`, `--resume`, `--device`, ...) override the config's values.
`sample` writes `a_red_car.png` (a gif or mp4 for video cascades; `--out` / `--format` choose). Runs on the GPU when
there is one, else on the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagen_pytorch.configs import ImagenConfig, ImagenTrainerConfig, load_imagen_from_checkpoint
from synthesis_core import cli
from synthesis_core.protocol import as_videos

logger = logging.getLogger("imagen_pytorch.cli")

DEFAULT_CONFIG_PATH = "./imagen_config.json"


def default_trainer_config() -> ImagenTrainerConfig:
    """The config `imagen config` writes: the README's two-stage cascade (64 -> 256) on a folder of captioned
    images; edit it to taste."""
    # (a dict: ImagenConfig's fields are generated from Imagen's constructor at import, unseen by type checkers)
    imagen_arguments: dict[str, Any] = dict(
        unets=[
            dict(
                dim=32,
                cond_dim=512,
                dim_mults=(1, 2, 4, 8),
                num_resnet_blocks=3,
                layer_attns=(False, True, True, True),
                layer_cross_attns=(False, True, True, True),
            ),
            dict(
                dim=32,
                cond_dim=512,
                dim_mults=(1, 2, 4, 8),
                num_resnet_blocks=(2, 4, 8, 8),
                layer_attns=(False, False, False, True),
                layer_cross_attns=(False, False, False, True),
            ),
        ],
        image_sizes=(64, 256),
        timesteps=1000,
        cond_drop_prob=0.1,
    )
    return ImagenTrainerConfig(
        imagen=ImagenConfig(**imagen_arguments),
        dataset=dict(folder="./images", with_captions=True, batch_size=16, num_workers=0, shuffle=True),
        checkpoint_path="./checkpoints",
        checkpoint_every=1000,
    )


def text_to_file_name(text: str, max_length: int = 200) -> str:
    """'A squirrel, raiding the birdfeeder!' -> 'a_squirrel_raiding_the_birdfeeder'."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", text.strip().lower()).strip("_")
    return name[:max_length] or "sample"


# ---------------------------------------------------------------------------------------------------------------
# commands


def command_config(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        logger.error("%s exists; pass --force to overwrite it", path)
        return 1
    default_trainer_config().save(path)
    logger.info(
        "wrote %s: edit the cascade, trainer and dataset settings, then run `imagen train --config %s`", path, path
    )
    return 0


def _build_dataset(config: ImagenTrainerConfig, imagen):
    from imagen_pytorch.data import Dataset

    settings = dict(config.dataset)
    loader_kwargs = {
        key: settings.pop(key) for key in ("batch_size", "num_workers", "shuffle", "drop_last") if key in settings
    }
    settings.setdefault("image_size", max(imagen.image_sizes))
    if "folder" not in settings:
        raise ValueError("dataset.folder: the config names no image folder to train on (or pass --data)")
    if imagen.condition_on_text and not settings.get("with_captions", False):
        raise ValueError(
            "dataset.with_captions: the cascade is conditioned on text but the dataset has no captions; "
            "set dataset.with_captions=true (captions from name.txt beside each image) or "
            "imagen.condition_on_text=false"
        )
    if "exts" in settings:
        settings["exts"] = tuple(settings["exts"])
    return Dataset(**settings), loader_kwargs


def _config_with_options(args: argparse.Namespace) -> ImagenTrainerConfig:
    """The config file with the common options given on the command line in place of its values."""
    config = ImagenTrainerConfig.load(args.config)
    changes = {
        name: value
        for name, value in (
            ("checkpoint_path", args.output_dir),
            ("lr", args.lr),
            ("seed", args.seed),
            ("mixed_precision", args.mixed_precision),
            ("gradient_accumulate_every", args.grad_accum_every),
            ("checkpoint_every", args.save_every),
        )
        if value is not None
    }
    dataset = dict(config.dataset)
    if args.data is not None:
        dataset["folder"] = args.data
    if args.batch_size is not None:
        dataset["batch_size"] = args.batch_size
    if args.valid:
        changes["split_valid_from_train"] = True
    return dataclasses.replace(config, dataset=dataset, **changes)


def _loss(logs) -> float:
    return float(logs["loss"]) if isinstance(logs, dict) else float(logs)


def command_train(args: argparse.Namespace) -> int:
    from imagen_pytorch.trainer import ImagenTrainer

    if args.steps is not None and args.epoches is not None:
        raise ValueError("--steps: give either --steps (optimizer steps) or --epoches (passes over the data)")
    config = _config_with_options(args)
    cpu = None if args.device is None else cli.resolve_device(args.device) == "cpu"
    trainer = ImagenTrainer(config.imagen.create(), **config.trainer_kwargs(), cpu=cpu)
    # without --resume the trainer has resumed from the newest checkpoint of checkpoint_path, if any
    if args.resume == "latest":
        trainer.load_from_checkpoint_folder()
    elif args.resume is not None:
        trainer.load(args.resume)
    dataset, loader_kwargs = _build_dataset(config, trainer.imagen)
    trainer.add_train_dataset(dataset, batch_size=loader_kwargs.pop("batch_size", 16), **loader_kwargs)
    engine = trainer.engine  # the BaseTrainer that runs the loop
    batches_per_epoch = engine.data_streams["train"].batches_per_epoch() or 1
    steps_per_epoch = max(math.ceil(batches_per_epoch / config.gradient_accumulate_every), 1)

    unet_number = trainer.imagen.resolve_train_unet_number(args.unet)  # a clear error for a wrong --unet
    start = int(trainer.steps[unet_number - 1])
    total = args.steps if args.steps is not None else (args.epoches or 1000) * steps_per_epoch
    logger.info(
        "training unet %d for %d steps (%d per epoch; it has taken %d)", unet_number, total, steps_per_epoch, start
    )

    def validate() -> None:
        valid_loss = trainer.valid_step(unet_number=unet_number, max_batch_size=config.max_batch_size)
        logger.info("step %d: valid loss %.4f", int(trainer.steps[unet_number - 1]), _loss(valid_loss))

    def write_samples() -> None:
        if not args.sample_text or not trainer.is_main:
            return
        step = int(trainer.steps[unet_number - 1])
        texts = args.sample_text if trainer.imagen.condition_on_text else None
        samples = trainer.sample(
            texts=texts, batch_size=None if texts else 1, stop_at_unet_number=unet_number, progress=False
        )
        name = text_to_file_name(args.sample_text[0])
        fmt = "gif" if trainer.imagen.is_video else "png"
        path = Path(args.samples_folder) / f"{name}-unet{unet_number}-{step}.{fmt}"
        path = cli.write_video(as_videos(samples), path)
        logger.info("step %d: samples written to %s", step, path)

    engine.fit(
        start + total,
        lambda: {"loss": _loss(trainer.train_step(unet_number=unet_number, max_batch_size=config.max_batch_size))},
        step_count=lambda: int(trainer.steps[unet_number - 1]),
        every=[((args.valid or 0) * steps_per_epoch, validate), (args.sample_every, write_samples)],
        desc=f"unet {unet_number}",
    )
    path = trainer.save_checkpoint() if config.checkpoint_path else trainer.save(Path("checkpoint.safetensors"))
    logger.info("saved %s", path)
    return 0


def command_sample(args: argparse.Namespace) -> int:
    imagen = load_imagen_from_checkpoint(args.model, load_ema_if_available=args.load_ema)
    imagen = imagen.to(cli.resolve_device(args.device))
    texts = ([args.prompt] if args.prompt else []) + (args.text or [])
    if imagen.condition_on_text and not texts:
        logger.error(
            'this model is conditioned on text: give a caption, e.g. imagen sample --model %s "a cat"', args.model
        )
        return 1
    if not imagen.condition_on_text and args.text:
        raise ValueError(
            "--text: this model is not conditioned on text; sample it without --text (a caption "
            "given as the last argument only names the file)"
        )
    args.text = texts if imagen.condition_on_text else None
    if not imagen.is_video and args.num_frames is not None and args.num_frames != 1:
        raise ValueError(f"--num-frames: an image cascade makes one frame, got {args.num_frames}")
    num_frames = (args.num_frames or 16) if imagen.is_video else None
    videos = cli.sample_videos(imagen, args, num_frames=num_frames)
    if args.out is None:  # the published CLI's file name: the caption's, in --output_folder
        fmt = args.format or ("gif" if imagen.is_video else "png")
        args.out = str(Path(args.output_folder) / f"{text_to_file_name(texts[0] if texts else 'sample')}.{fmt}")
    cli.write_video(videos, cli.output_path(args), fps=args.fps)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# the parser


def build_parser() -> argparse.ArgumentParser:
    parser, commands = cli.command_parser("imagen", "Train and sample Imagen cascades.")

    config = cli.add_command(commands, "config", command_config, "write a config file to edit")
    config.add_argument("--path", default=DEFAULT_CONFIG_PATH, help=f"where to write it [{DEFAULT_CONFIG_PATH}]")
    config.add_argument("--force", action="store_true", help="overwrite an existing file")

    train = cli.add_command(
        commands, "train", command_train, "train (or resume training) one unet of the configured cascade"
    )
    train.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"the config file [{DEFAULT_CONFIG_PATH}]")
    train.add_argument("--data", default=None, help="folder of (captioned) images [the config's dataset.folder]")
    cli.add_training_arguments(
        train,
        output_dir="./checkpoints",
        batch_size=16,
        steps=None,
        lr=1e-4,
        save_every=1000,
        sample_every=100,
        from_config=True,
        aliases={"--sample-every": ("--sample_every",), "--sample-text": ("--text",)},
    )
    train.add_argument("--unet", type=int, default=1, help="the number of the unet to train [1]")
    train.add_argument(
        "--epoches", type=int, default=None, help="passes over the training data to run [1000 unless --steps is given]"
    )
    train.add_argument(
        "--samples_folder", "--samples-folder", default="./samples", help="where --text samples go [./samples]"
    )
    train.add_argument(
        "--valid",
        type=int,
        nargs="?",
        const=1,
        default=None,
        help="validate on held-out data every N epochs [off; 1 when given without N]",
    )

    sample = cli.add_command(
        commands, "sample", command_sample, "sample from a checkpoint written by ImagenTrainer.save"
    )
    cli.add_sample_arguments(
        sample,
        model_help="the checkpoint file",
        cond_scale=5.0,
        aliases={
            "--cond-scale": ("--cond_scale",),
            "--num-frames": ("--video_frames",),
            "--format": ("--video_format",),
        },
    )
    sample.add_argument(
        "--load_ema", "--load-ema", action="store_true", help="use the EMA weights when the checkpoint has them"
    )
    sample.add_argument(
        "--output_folder",
        "--output-folder",
        default=".",
        help="where the file named after the caption goes, without --out [.]",
    )
    sample.add_argument("prompt", nargs="?", default=None, help="the caption; the file is named after it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_known_args(argv)[0]
    for name in ("epoches", "unet", "sample_every", "steps", "num_frames", "valid", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")
    return cli.run_cli(parser, argv, logger)


if __name__ == "__main__":
    sys.exit(main())
