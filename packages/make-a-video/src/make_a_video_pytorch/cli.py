"""`make-a-video` command line: train (images, videos, or both; the frame interpolator) and sample.

    # 1. spatial pretraining on captioned images (name.png + name.txt)
    make-a-video train --images images/ --image-size 64 --num-frames 16 --output-dir results/image
    # 2. video fine-tuning from the image model, spatial layers frozen
    make-a-video train --init-from results/image/model --data videos/ --freeze-spatial --output-dir results/video
    # 3. a frame interpolator (doubles the frame rate)
    make-a-video train --data videos/ --interpolator --output-dir results/interp
    # sampling (optionally interpolated to a higher frame rate)
    make-a-video sample --model results/video/model --text "a red circle moving left" --out a.gif \
        --interpolator results/interp/model --factor 2

`--data` (alias `--videos`) is a folder of videos; `--shapes N` trains on N built-in captioned shapes videos (no
download) instead; `--text-encoder none` builds an unconditional model. The options are those of every package's
command line (`synthesis_core.cli`). Nothing is ever asked interactively; `--resume latest` continues a run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from synthesis_core import cli

logger = logging.getLogger("make_a_video_pytorch.cli")


def _build_model(args: argparse.Namespace):
    from make_a_video_pytorch.make_a_video import FrameInterpolator, MakeAVideo
    from make_a_video_pytorch.unet import SpaceTimeUnet
    from synthesis_core.text import get_encoded_dim

    cls = FrameInterpolator if args.interpolator else MakeAVideo
    if args.init_from is not None:
        image_model = cli.load_model(args.init_from, MakeAVideo, option="--init-from")
        return cls.from_image_model(image_model, num_frames=args.num_frames, freeze_spatial=args.freeze_spatial)

    text_encoder = None if args.text_encoder.lower() == "none" else args.text_encoder
    num_levels = len(args.dim_mults)
    attn_levels = args.attn_levels if args.attn_levels is not None else (num_levels - 1,)
    compressed = (
        args.temporal_compression_levels
        if args.temporal_compression_levels is not None
        else tuple(range(1, num_levels))
    )
    unet = SpaceTimeUnet(
        dim=args.dim,
        channels=3,
        dim_mults=args.dim_mults,
        self_attns=tuple(i in attn_levels for i in range(num_levels)),
        temporal_compression=tuple(i in compressed for i in range(num_levels)),
        resnet_block_depths=args.depth,
        attn_dim_head=args.dim_head,
        attn_heads=args.heads,
        text_embed_dim=get_encoded_dim(text_encoder) if text_encoder is not None else None,
        cond_channels=4 if args.interpolator else 0,
    )
    kwargs = dict(
        image_size=args.image_size,
        num_frames=args.num_frames,
        timesteps=args.timesteps,
        freeze_spatial=args.freeze_spatial,
    )
    if text_encoder is not None:
        kwargs["text_encoder_name"] = text_encoder
    return cls(unet, **kwargs)


def train(args: argparse.Namespace) -> int:
    from make_a_video_pytorch.trainer import MakeAVideoTrainer

    if args.data is None and args.images is None and args.shapes is None and args.shape_images is None:
        raise ValueError("--data: give training data: --data (videos), --images, --shapes or --shape-images")
    model = _build_model(args)
    data: dict = {}
    if args.shapes is not None:
        data["video_dataset"] = cli.shapes_dataset(args, image_size=args.image_size, num_frames=model.num_frames)
    if args.shape_images is not None:
        data["image_dataset"] = cli.shapes_dataset(
            args, image_size=args.image_size, images=True, count=args.shape_images
        )
    trainer = MakeAVideoTrainer(
        model, video_folder=args.data, image_folder=args.images, **cli.training_kwargs(args), **data
    )
    folder = trainer.train()
    logger.info("model saved to %s", folder)
    return 0


def sample(args: argparse.Namespace) -> int:
    from make_a_video_pytorch.make_a_video import FrameInterpolator, MakeAVideo

    device = cli.resolve_device(args.device)
    model = cli.load_model(args.model, MakeAVideo, device=device, refuse=FrameInterpolator)
    cli.replace_text_encoder(model, args.text_encoder)
    videos = cli.sample_videos(model, args, sampler=args.sampler)
    fps = args.fps
    if args.interpolator is not None:
        interpolator = cli.load_model(args.interpolator, FrameInterpolator, device=device, option="--interpolator")
        if args.text_encoder is not None and interpolator.text_encoder is not None:
            interpolator.text_encoder = model.text_encoder
        texts = args.text if interpolator.text_encoder is not None else None
        videos = interpolator.interpolate(
            videos, factor=args.factor, texts=texts, steps=args.steps, generator=cli.make_generator(args.seed, device)
        )
        fps *= args.factor
    cli.write_video(videos, cli.output_path(args), fps=fps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, commands = cli.command_parser("make-a-video", __doc__)

    tr = cli.add_command(
        commands, "train", train, "train a model (images: spatial layers; videos: all) or an interpolator"
    )
    cli.add_dataset_arguments(
        tr,
        data_help="folder of videos (gif/mp4/frame folders; captions in name.txt)",
        aliases=("--videos",),
        required=False,
    )
    tr.add_argument("--images", default=None, help="folder of images (captions in name.txt)")
    tr.add_argument("--shape-images", type=int, default=None, help="train on N built-in captioned shapes images")
    cli.add_training_arguments(tr, output_dir="results", steps=100_000, lr=1e-4, save_every=1000, sample_every=1000)
    tr.add_argument("--init-from", default=None, help="a trained (image) model folder to start the video model from")
    tr.add_argument("--freeze-spatial", action="store_true", help="train the temporal layers only")
    tr.add_argument("--interpolator", action="store_true", help="train a frame interpolator instead")
    tr.add_argument(
        "--text-encoder",
        default="google/t5-v1_1-base",
        help="hub name or local folder (T5 or BERT), or 'none' for an unconditional model",
    )
    tr.add_argument("--image-size", type=int, default=64)
    tr.add_argument("--num-frames", type=int, default=16)
    tr.add_argument("--dim", type=int, default=64)
    tr.add_argument("--dim-mults", type=cli.int_list, default=(1, 2, 4, 8))
    tr.add_argument("--depth", type=int, default=2, help="resnet blocks per level")
    tr.add_argument("--attn-levels", type=cli.int_list, default=None, help="levels with attention (default: last)")
    tr.add_argument(
        "--temporal-compression-levels",
        type=cli.int_list,
        default=None,
        help="levels entered with halved frames (default: all but the first)",
    )
    tr.add_argument("--heads", type=int, default=8)
    tr.add_argument("--dim-head", type=int, default=64)
    tr.add_argument("--timesteps", type=int, default=1000)

    sm = cli.add_command(commands, "sample", sample, "generate videos (optionally frame-interpolated)")
    cli.add_sample_arguments(sm, model_help="folder written by train (results/model)", text_encoder=True)
    sm.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp_2m"), default=None)
    sm.add_argument("--interpolator", default=None, help="a trained FrameInterpolator folder")
    sm.add_argument("--factor", type=int, default=2, help="frame-rate factor of the interpolator")
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
