"""`make-a-video` command line: train (images, videos, or both; the frame interpolator) and sample.

    # 1. spatial pretraining on captioned images (name.png + name.txt)
    make-a-video train --images images/ --image-size 64 --num-frames 16 --results-folder results/image
    # 2. video fine-tuning from the image model, spatial layers frozen
    make-a-video train --init-from results/image/model --videos videos/ --freeze-spatial --results-folder results/video
    # 3. a frame interpolator (doubles the frame rate)
    make-a-video train --videos videos/ --interpolator --results-folder results/interp
    # sampling (optionally interpolated to a higher frame rate)
    make-a-video sample --model results/video/model --text "a red circle moving left" --out a.gif \
        --interpolator results/interp/model --factor 2

`--shapes N` trains on N built-in captioned shapes videos (no download) instead of a folder; `--text-encoder none`
builds an unconditional model. Nothing is ever asked interactively; `--resume latest` continues a run.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from synthesis_core.cli import (
    add_output_arguments,
    add_training_arguments,
    resolve_device,
    run_cli,
    training_kwargs,
    write_video,
)
from synthesis_core.utils import exists

logger = logging.getLogger("make_a_video_pytorch.cli")


def _int_list(text: str) -> tuple[int, ...]:
    if not text.strip():
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _build_model(args: argparse.Namespace):
    from make_a_video_pytorch.make_a_video import FrameInterpolator, MakeAVideo
    from make_a_video_pytorch.unet import SpaceTimeUnet
    from synthesis_core.checkpoint import load_model_from_folder
    from synthesis_core.text import get_encoded_dim

    cls = FrameInterpolator if args.interpolator else MakeAVideo
    if exists(args.init_from):
        image_model = load_model_from_folder(args.init_from)
        if not isinstance(image_model, MakeAVideo):
            raise ValueError(f"--init-from: {args.init_from} holds a {type(image_model).__name__}, not a MakeAVideo")
        return cls.from_image_model(image_model, num_frames=args.num_frames, freeze_spatial=args.freeze_spatial)

    text_encoder = None if args.text_encoder.lower() == "none" else args.text_encoder
    num_levels = len(args.dim_mults)
    attn_levels = args.attn_levels if exists(args.attn_levels) else (num_levels - 1,)
    compressed = args.temporal_compression_levels if exists(args.temporal_compression_levels) \
        else tuple(range(1, num_levels))
    unet = SpaceTimeUnet(
        dim=args.dim,
        channels=3,
        dim_mults=args.dim_mults,
        self_attns=tuple(i in attn_levels for i in range(num_levels)),
        temporal_compression=tuple(i in compressed for i in range(num_levels)),
        resnet_block_depths=args.depth,
        attn_dim_head=args.dim_head,
        attn_heads=args.heads,
        text_embed_dim=get_encoded_dim(text_encoder) if exists(text_encoder) else None,
        cond_channels=4 if args.interpolator else 0,
    )
    kwargs = dict(image_size=args.image_size, num_frames=args.num_frames, timesteps=args.timesteps,
                  freeze_spatial=args.freeze_spatial)
    if exists(text_encoder):
        kwargs["text_encoder_name"] = text_encoder
    return cls(unet, **kwargs)


def train(args: argparse.Namespace) -> int:
    from make_a_video_pytorch.trainer import MakeAVideoTrainer

    model = _build_model(args)
    data: dict = {}
    if exists(args.shapes):
        from synthesis_core.datasets import ShapesVideoDataset

        data["video_dataset"] = ShapesVideoDataset(args.shapes, image_size=args.image_size,
                                                   num_frames=model.num_frames, seed=args.seed or 0)
    if exists(args.shape_images):
        from synthesis_core.datasets import ShapesVideoDataset

        data["image_dataset"] = ShapesVideoDataset(args.shape_images, image_size=args.image_size, images=True,
                                                   seed=args.seed or 0)
    trainer = MakeAVideoTrainer(
        model, video_folder=args.videos, image_folder=args.images, save_every=args.save_every,
        sample_every=args.sample_every, sample_texts=args.sample_text, **training_kwargs(args), **data,
    )
    if exists(args.resume):
        trainer.load(args.resume)
    folder = trainer.train()
    logger.info("model saved to %s", folder)
    return 0


def sample(args: argparse.Namespace) -> int:
    from make_a_video_pytorch.make_a_video import FrameInterpolator, MakeAVideo
    from synthesis_core.checkpoint import load_model_from_folder
    from synthesis_core.text import TextEncoder

    device = resolve_device(args.device)
    model = load_model_from_folder(args.model, map_location=device)
    if not isinstance(model, MakeAVideo) or isinstance(model, FrameInterpolator):
        raise ValueError(f"--model: {args.model} holds a {type(model).__name__}, not a MakeAVideo")
    if exists(args.text_encoder) and exists(model.text_encoder):
        model.text_encoder = TextEncoder(args.text_encoder, max_length=model.text_encoder.max_length)
    generator = torch.Generator(device).manual_seed(args.seed) if exists(args.seed) else None
    videos = model.sample(texts=args.text or None, batch_size=args.batch_size, num_frames=args.num_frames,
                          cond_scale=args.cond_scale, sampler=args.sampler, steps=args.steps, generator=generator)
    if exists(args.interpolator):
        interpolator = load_model_from_folder(args.interpolator, map_location=device)
        if not isinstance(interpolator, FrameInterpolator):
            raise ValueError(f"--interpolator: {args.interpolator} holds a {type(interpolator).__name__}, "
                             "not a FrameInterpolator")
        if exists(args.text_encoder) and exists(interpolator.text_encoder):
            interpolator.text_encoder = model.text_encoder
        texts = args.text if exists(interpolator.text_encoder) else None
        videos = interpolator.interpolate(videos, factor=args.factor, texts=texts, steps=args.steps,
                                          generator=generator)
    write_video(videos, args.out, fps=args.fps * (args.factor if exists(args.interpolator) else 1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make-a-video", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    tr = commands.add_parser("train", help="train a model (images: spatial layers; videos: all) or an interpolator")
    tr.add_argument("--videos", default=None, help="folder of videos (gif/mp4/frame folders; captions in name.txt)")
    tr.add_argument("--images", default=None, help="folder of images (captions in name.txt)")
    tr.add_argument("--shapes", type=int, default=None, help="train on N built-in captioned shapes videos")
    tr.add_argument("--shape-images", type=int, default=None, help="train on N built-in captioned shapes images")
    tr.add_argument("--init-from", default=None, help="a trained (image) model folder to start the video model from")
    tr.add_argument("--freeze-spatial", action="store_true", help="train the temporal layers only")
    tr.add_argument("--interpolator", action="store_true", help="train a frame interpolator instead")
    tr.add_argument("--text-encoder", default="google/t5-v1_1-base",
                    help="hub name or local folder (T5 or BERT), or 'none' for an unconditional model")
    tr.add_argument("--image-size", type=int, default=64)
    tr.add_argument("--num-frames", type=int, default=16)
    tr.add_argument("--dim", type=int, default=64)
    tr.add_argument("--dim-mults", type=_int_list, default=(1, 2, 4, 8))
    tr.add_argument("--depth", type=int, default=2, help="resnet blocks per level")
    tr.add_argument("--attn-levels", type=_int_list, default=None, help="levels with attention (default: last)")
    tr.add_argument("--temporal-compression-levels", type=_int_list, default=None,
                    help="levels entered with halved frames (default: all but the first)")
    tr.add_argument("--heads", type=int, default=8)
    tr.add_argument("--dim-head", type=int, default=64)
    tr.add_argument("--timesteps", type=int, default=1000)
    add_training_arguments(tr, results_folder="results", steps=100_000, lr=1e-4, save_results_every=None,
                           save_model_every=None)
    tr.add_argument("--save-every", type=int, default=1000)
    tr.add_argument("--sample-every", type=int, default=1000)
    tr.add_argument("--sample-text", action="append", default=None, help="prompt for periodic samples (repeat)")
    tr.set_defaults(func=train)

    sm = commands.add_parser("sample", help="generate videos (optionally frame-interpolated)")
    sm.add_argument("--model", required=True, help="folder written by train (results/model)")
    sm.add_argument("--text", action="append", default=None, help="prompt (repeat for a batch)")
    sm.add_argument("--batch-size", type=int, default=1, help="videos to sample without prompts")
    sm.add_argument("--num-frames", type=int, default=None)
    sm.add_argument("--cond-scale", type=float, default=3.0)
    sm.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp_2m"), default=None)
    sm.add_argument("--steps", type=int, default=None)
    sm.add_argument("--interpolator", default=None, help="a trained FrameInterpolator folder")
    sm.add_argument("--factor", type=int, default=2, help="frame-rate factor of the interpolator")
    sm.add_argument("--text-encoder", default=None, help="override the text encoder (e.g. a local folder)")
    add_output_arguments(sm, out="sample.gif")
    sm.set_defaults(func=sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
