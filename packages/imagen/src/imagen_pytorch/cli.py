"""The `imagen` command: write a config, train a unet from it, sample from a checkpoint.

```
imagen config --path ./imagen_config.json             # a config to edit (cascade, trainer, dataset)
imagen train --config ./imagen_config.json --unet 1 --epoches 1000 --valid 100 --text "a red car"
imagen sample --model ./checkpoints/checkpoint-00001000.safetensors --cond_scale 5 "a red car"
```
`train` resumes from the newest checkpoint in the config's `checkpoint_path` and saves there every
`checkpoint_every` updates and at the end. `sample` writes `a_red_car.png` (a gif or mp4 for video cascades).
Runs on the GPU when there is one, else on the CPU.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from imagen_pytorch.configs import ImagenConfig, ImagenTrainerConfig, load_imagen_from_checkpoint

logger = logging.getLogger("imagen_pytorch.cli")

DEFAULT_CONFIG_PATH = "./imagen_config.json"


def default_trainer_config() -> ImagenTrainerConfig:
    """The config `imagen config` writes: the README's two-stage cascade (64 -> 256) on a folder of captioned
    images; edit it to taste."""
    imagen = ImagenConfig(
        unets=[
            dict(dim=32, cond_dim=512, dim_mults=(1, 2, 4, 8), num_resnet_blocks=3,
                 layer_attns=(False, True, True, True), layer_cross_attns=(False, True, True, True)),
            dict(dim=32, cond_dim=512, dim_mults=(1, 2, 4, 8), num_resnet_blocks=(2, 4, 8, 8),
                 layer_attns=(False, False, False, True), layer_cross_attns=(False, False, False, True)),
        ],
        image_sizes=(64, 256),
        timesteps=1000,
        cond_drop_prob=0.1,
    )
    return ImagenTrainerConfig(
        imagen=imagen,
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
    logger.info("wrote %s: edit the cascade, trainer and dataset settings, then run `imagen train --config %s`",
                path, path)
    return 0


def _build_dataset(config: ImagenTrainerConfig, imagen):
    from imagen_pytorch.data import Dataset

    settings = dict(config.dataset)
    loader_kwargs = {key: settings.pop(key) for key in ("batch_size", "num_workers", "shuffle", "drop_last")
                     if key in settings}
    settings.setdefault("image_size", max(imagen.image_sizes))
    if "folder" not in settings:
        raise ValueError("dataset.folder: the config names no image folder to train on")
    if imagen.condition_on_text and not settings.get("with_captions", False):
        raise ValueError("dataset.with_captions: the cascade is conditioned on text but the dataset has no captions; "
                         "set dataset.with_captions=true (captions from name.txt beside each image) or "
                         "imagen.condition_on_text=false")
    if "exts" in settings:
        settings["exts"] = tuple(settings["exts"])
    return Dataset(**settings), loader_kwargs


def command_train(args: argparse.Namespace) -> int:
    config = ImagenTrainerConfig.load(args.config)
    if args.valid:
        config.split_valid_from_train = True
    trainer = config.create()
    dataset, loader_kwargs = _build_dataset(config, trainer.imagen)
    trainer.add_train_dataset(dataset, batch_size=loader_kwargs.pop("batch_size", 16), **loader_kwargs)

    unet_number = trainer.imagen.resolve_train_unet_number(args.unet)  # a clear error for a wrong --unet
    samples_folder = Path(args.samples_folder)
    start = int(trainer.steps[unet_number - 1])
    logger.info("training unet %d for %d steps (it has taken %d)", unet_number, args.epoches, start)
    bar = trainer.engine.progress(args.epoches, desc=f"unet {unet_number}")
    for step in range(1, args.epoches + 1):
        loss = trainer.train_step(unet_number=unet_number, max_batch_size=config.max_batch_size)
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update()
        if args.valid and step % args.valid == 0:
            valid_loss = trainer.valid_step(unet_number=unet_number, max_batch_size=config.max_batch_size)
            logger.info("step %d: valid loss %.4f", start + step, valid_loss)
        if args.text and step % args.sample_every == 0 and trainer.is_main:
            sample_path = samples_folder / f"{text_to_file_name(args.text)}-unet{unet_number}-{start + step}.png"
            _write_sample(trainer.sample(texts=[args.text] if trainer.imagen.condition_on_text else None,
                                         stop_at_unet_number=unet_number, use_tqdm=False), sample_path)
            logger.info("step %d: sample written to %s", start + step, sample_path)
    bar.close()
    path = trainer.save_checkpoint() if config.checkpoint_path else trainer.save(Path("checkpoint.safetensors"))
    logger.info("saved %s", path)
    return 0


def _write_sample(output: torch.Tensor, path: Path, fps: int = 8) -> Path:
    from synthesis_core.video import save_image, save_video

    path.parent.mkdir(parents=True, exist_ok=True)
    sample = output[0].detach().float().cpu()
    if sample.ndim == 4:  # (c, t, h, w): a video
        save_video(sample, path, fps=fps)
    else:
        save_image(sample, path)
    return path


def command_sample(args: argparse.Namespace) -> int:
    imagen = load_imagen_from_checkpoint(args.model, load_ema_if_available=args.load_ema)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    imagen = imagen.to(device)
    if imagen.condition_on_text and not args.text:
        logger.error("this model is conditioned on text: give a caption, e.g. imagen sample --model %s \"a cat\"",
                     args.model)
        return 1
    kwargs = dict(cond_scale=args.cond_scale, device=device)
    if imagen.condition_on_text:
        kwargs["texts"] = [args.text]
    if imagen.is_video:
        kwargs["video_frames"] = args.video_frames
    if args.steps:
        kwargs["steps"] = args.steps
    output = imagen.sample(**kwargs)
    suffix = f".{args.video_format}" if imagen.is_video else ".png"
    path = Path(args.output_folder) / (text_to_file_name(args.text or "sample") + suffix)
    _write_sample(output, path)
    logger.info("wrote %s", path)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# the parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagen", description="Train and sample Imagen cascades.")
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="write a config file to edit")
    config.add_argument("--path", default=DEFAULT_CONFIG_PATH, help=f"where to write it [{DEFAULT_CONFIG_PATH}]")
    config.add_argument("--force", action="store_true", help="overwrite an existing file")
    config.set_defaults(run=command_config)

    train = commands.add_parser("train", help="train (or resume training) one unet of the configured cascade")
    train.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=f"the config file [{DEFAULT_CONFIG_PATH}]")
    train.add_argument("--unet", type=int, default=1, help="the number of the unet to train [1]")
    train.add_argument("--epoches", type=int, default=1000,
                       help="how many training steps (batches) to run, as the published CLI counts them [1000]")
    train.add_argument("--text", default=None, help="a caption to sample with every --sample_every steps")
    train.add_argument("--sample_every", type=int, default=100, help="steps between samples of --text [100]")
    train.add_argument("--samples_folder", default="./samples", help="where --text samples go [./samples]")
    train.add_argument("--valid", type=int, nargs="?", const=100, default=None,
                       help="validate on held-out data every N steps [off; 100 when given without N]")
    train.set_defaults(run=command_train)

    sample = commands.add_parser("sample", help="sample from a checkpoint written by ImagenTrainer.save")
    sample.add_argument("--model", required=True, help="the checkpoint file")
    sample.add_argument("--cond_scale", type=float, default=5.0, help="classifier-free guidance scale [5.0]")
    sample.add_argument("--load_ema", action="store_true", help="use the EMA weights when the checkpoint has them")
    sample.add_argument("--steps", type=int, default=None, help="sampling steps per unet [the model's default]")
    sample.add_argument("--video_frames", type=int, default=16, help="frames to generate (video cascades) [16]")
    sample.add_argument("--video_format", choices=("gif", "mp4"), default="gif", help="video file format [gif]")
    sample.add_argument("--output_folder", default=".", help="where the file is written [.]")
    sample.add_argument("text", nargs="?", default=None, help="the caption; the file is named after it")
    sample.set_defaults(run=command_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("epoches", "unet", "sample_every", "steps", "video_frames", "valid"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name}: expected a positive integer, got {value}")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:  # bad input: a clear line, the traceback only at debug level
        logger.debug("imagen %s failed", args.command, exc_info=True)
        logger.error("imagen %s: %s", args.command, error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
