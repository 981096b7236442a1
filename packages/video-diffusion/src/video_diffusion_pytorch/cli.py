"""`video-diffusion` command line: train a `GaussianDiffusion` on a folder of videos, sample videos from it.

    video-diffusion train --data videos/ --image-size 32 --num-frames 8 --output-dir results
    video-diffusion train --data videos/ --image-data images/ --text-encoder bert-base-cased --output-dir results
    video-diffusion sample --model results/diffusion --text "a red circle moving left" --cond-scale 2 --out a.gif

Videos are gif/mp4/... files or folders of frames; with `--text-encoder` (a hub name or a local BERT folder) the
model trains on their `name.txt` captions. `--shapes N` trains on N built-in captioned shapes videos (written to
`<output-dir>/shapes`, no download) instead of a folder. Nothing is ever asked interactively; `--resume latest`
continues a run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from synthesis_core import cli

logger = logging.getLogger("video_diffusion_pytorch.cli")


def _write_shapes(args: argparse.Namespace) -> Path:
    """The `--shapes` videos as a captioned folder (gif + name.txt) under the output folder: the trainer reads
    them like any other data."""
    from synthesis_core.video import save_video

    folder = Path(args.output_dir) / "shapes"
    folder.mkdir(parents=True, exist_ok=True)
    dataset = cli.shapes_dataset(args, image_size=args.image_size, num_frames=args.num_frames)
    for index in range(len(dataset)):
        video, caption = dataset[index]
        save_video(video, folder / f"{index:05d}.gif")
        (folder / f"{index:05d}.txt").write_text(caption)
    return folder


def train(args: argparse.Namespace) -> int:
    from video_diffusion_pytorch.diffusion import GaussianDiffusion
    from video_diffusion_pytorch.trainer import Trainer
    from video_diffusion_pytorch.unet import Unet3D

    text_encoder = None if args.text_encoder.lower() == "none" else args.text_encoder
    unet_kwargs = dict(use_bert_text_cond=True, text_encoder_name=text_encoder) if text_encoder else {}
    unet = Unet3D(
        dim=args.dim, dim_mults=args.dim_mults, attn_heads=args.heads, attn_dim_head=args.dim_head, **unet_kwargs
    )
    diffusion = GaussianDiffusion(
        unet, image_size=args.image_size, num_frames=args.num_frames, timesteps=args.timesteps, loss_type=args.loss_type
    )
    folder = _write_shapes(args) if args.shapes is not None else args.data
    kwargs = cli.training_kwargs(args)
    # the seed README's names of the trainer's keywords
    trainer = Trainer(
        diffusion,
        folder,
        train_batch_size=kwargs.pop("batch_size"),
        train_lr=kwargs.pop("lr"),
        train_num_steps=kwargs.pop("num_train_steps"),
        gradient_accumulate_every=kwargs.pop("grad_accum_every"),
        image_folder=args.image_data,
        num_sample_rows=args.num_sample_rows,
        **kwargs,
    )
    folder = trainer.train()
    logger.info("model saved to %s", folder)
    return 0


def sample(args: argparse.Namespace) -> int:
    from video_diffusion_pytorch.diffusion import GaussianDiffusion

    diffusion = cli.load_model(args.model, GaussianDiffusion, device=cli.resolve_device(args.device))
    cli.replace_text_encoder(diffusion.model, args.text_encoder)
    return cli.sample_and_write(diffusion, args, sampler=args.sampler)


def build_parser() -> argparse.ArgumentParser:
    parser, commands = cli.command_parser("video-diffusion", __doc__)

    tr = cli.add_command(commands, "train", train, "train a video diffusion model on a folder of videos")
    cli.add_dataset_arguments(tr, data_help="folder of videos (gif/mp4/frame folders; captions in name.txt)")
    cli.add_training_arguments(
        tr, output_dir="results", batch_size=4, steps=100_000, lr=1e-4, save_every=1000, sample_every=1000
    )
    tr.add_argument("--image-data", default=None, help="folder of images to co-train on (one-frame videos)")
    tr.add_argument(
        "--text-encoder",
        default="none",
        help="hub name or local folder of a BERT model to train on the captions, or 'none' [none]",
    )
    tr.add_argument("--image-size", type=int, default=32)
    tr.add_argument("--num-frames", type=int, default=8)
    tr.add_argument("--dim", type=int, default=64)
    tr.add_argument("--dim-mults", type=cli.int_list, default=(1, 2, 4, 8))
    tr.add_argument("--heads", type=int, default=8)
    tr.add_argument("--dim-head", type=int, default=32)
    tr.add_argument("--timesteps", type=int, default=1000)
    tr.add_argument("--loss-type", choices=("l1", "l2", "huber"), default="l1")
    tr.add_argument("--num-sample-rows", type=int, default=2, help="periodic samples: a grid of N x N videos [2]")

    sm = cli.add_command(commands, "sample", sample, "generate videos")
    cli.add_sample_arguments(
        sm, model_help="folder written by train (results/diffusion)", cond_scale=2.0, text_encoder=True
    )
    sm.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp_2m"), default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
