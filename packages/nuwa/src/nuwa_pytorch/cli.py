"""`nuwa` command line: train the VQGAN-VAE, train NUWA on it, generate videos.

    nuwa train-vae --data images/ --image-size 64 --num-layers 3 --results-folder results/vae
    nuwa train --vae results/vae/vae --data videos/ --num-frames 5 --results-folder results/nuwa \
        --sample-text "a red circle moving left"
    nuwa generate --model results/nuwa/nuwa --text "a red circle moving left" --cond-scale 3 --out video.gif

`--shapes N` trains on the built-in captioned shapes videos (no download) instead of a folder; `train-vae` reads
a folder of images, or of videos with `--num-frames`. The perceptual loss needs VGG16 weights in the local torch
cache, or `--vgg-weights FILE`, or `--no-gan`. Nothing is asked interactively; `--resume latest` continues.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from synthesis_core.cli import (
    add_dataset_arguments,
    add_output_arguments,
    add_training_arguments,
    resolve_device,
    run_cli,
    training_kwargs,
    write_video,
)
from synthesis_core.utils import exists

logger = logging.getLogger("nuwa_pytorch.cli")


def _shapes(num_samples: int, image_size: int, num_frames: int, seed: int | None) -> Dataset:
    """The core captioned shapes videos: `(video (3, t, h, w), caption)` items, made on the fly."""
    from synthesis_core.datasets import ShapesVideoDataset

    return ShapesVideoDataset(num_samples, image_size=image_size, num_frames=num_frames, seed=seed or 0)


def train_vae(args: argparse.Namespace) -> int:
    from nuwa_pytorch.trainer import VQGanVAETrainer
    from nuwa_pytorch.vqgan_vae import VQGanVAE
    from synthesis_core.gan import default_vgg

    vgg = default_vgg(args.vgg_weights) if exists(args.vgg_weights) and not args.no_gan else None
    vae = VQGanVAE(dim=args.dim, image_size=args.image_size, num_layers=args.num_layers, channels=args.channels,
                   vq_codebook_size=args.codebook_size, vq_codebook_dim=args.codebook_dim,
                   num_resnet_blocks=args.num_resnet_blocks, vgg=vgg, use_vgg_and_gan=not args.no_gan)
    num_frames = args.num_frames or 4
    dataset = _shapes(args.shapes, args.image_size, num_frames, args.seed) if exists(args.shapes) else None
    trainer = VQGanVAETrainer(vae, dataset=dataset, folder=None if exists(dataset) else args.data,
                              num_frames=args.num_frames, resume=args.resume, **training_kwargs(args))
    trainer.train()
    logger.info("VAE saved to %s", Path(args.results_folder) / "vae")
    return 0


def train(args: argparse.Namespace) -> int:
    from nuwa_pytorch.nuwa import NUWA
    from nuwa_pytorch.trainer import NUWATrainer, WordTokenizer
    from nuwa_pytorch.vqgan_vae import VQGanVAE

    vae = VQGanVAE.from_pretrained(args.vae)
    tokenizer, dataset = None, None
    if exists(args.shapes):
        from synthesis_core.datasets import all_captions

        dataset = _shapes(args.shapes, vae.image_size, args.num_frames, args.seed)
        tokenizer = WordTokenizer.from_captions(all_captions())
    nuwa = NUWA(vae=vae, dim=args.dim, text_num_tokens=args.text_num_tokens, text_enc_depth=args.text_enc_depth,
                text_enc_heads=args.heads, text_max_seq_len=args.text_max_seq_len, max_video_frames=args.num_frames,
                dec_depth=args.dec_depth, dec_heads=args.heads, dec_reversible=not args.no_reversible,
                enc_reversible=not args.no_reversible, sparse_3dna_kernel_size=args.kernel_size,
                sparse_3dna_dilation=tuple(args.dilation), attn_dropout=args.dropout, ff_dropout=args.dropout)
    trainer = NUWATrainer(nuwa, dataset=dataset, folder=None if exists(dataset) else args.data,
                          num_frames=args.num_frames, tokenizer=tokenizer, sample_texts=args.sample_text,
                          resume=args.resume, **training_kwargs(args))
    trainer.train()
    logger.info("model saved to %s", Path(args.results_folder) / "nuwa")
    return 0


def generate(args: argparse.Namespace) -> int:
    from einops import rearrange

    from nuwa_pytorch.nuwa import NUWA
    from nuwa_pytorch.trainer import WordTokenizer

    device = resolve_device(args.device)
    nuwa = NUWA.from_pretrained(args.model, map_location=device)
    tokenizer = WordTokenizer.load(Path(args.model))
    text = tokenizer.encode(args.text, max_length=nuwa.text_max_seq_len, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed) if exists(args.seed) else None
    video = nuwa.generate(text, filter_thres=args.filter_thres, temperature=args.temperature,
                          cond_scale=args.cond_scale, num_frames=args.num_frames, generator=generator)
    write_video(rearrange(video, "b f c h w -> b c f h w"), args.out, fps=args.fps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nuwa", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    vae = commands.add_parser("train-vae", help="train the VQGAN-VAE image tokenizer")
    add_dataset_arguments(vae)
    add_training_arguments(vae, results_folder="results/vae")
    vae.add_argument("--image-size", type=int, default=64)
    vae.add_argument("--num-frames", type=int, default=None, help="read videos (every frame is an image)")
    vae.add_argument("--dim", type=int, default=64)
    vae.add_argument("--num-layers", type=int, default=3)
    vae.add_argument("--num-resnet-blocks", type=int, default=1)
    vae.add_argument("--channels", type=int, default=3)
    vae.add_argument("--codebook-size", type=int, default=512)
    vae.add_argument("--codebook-dim", type=int, default=None, help="lower-dimensional codes")
    vae.add_argument("--vgg-weights", default=None, help="torchvision VGG16 weights file for the perceptual loss")
    vae.add_argument("--no-gan", action="store_true", help="reconstruction + quantizer losses only")
    vae.set_defaults(func=train_vae)

    tr = commands.add_parser("train", help="train NUWA on a trained VAE (videos with name.txt captions)")
    add_dataset_arguments(tr)
    add_training_arguments(tr, results_folder="results/nuwa")
    tr.add_argument("--vae", required=True, help="folder written by train-vae (results/vae/vae)")
    tr.add_argument("--num-frames", type=int, default=5)
    tr.add_argument("--dim", type=int, default=256)
    tr.add_argument("--heads", type=int, default=8)
    tr.add_argument("--text-num-tokens", type=int, default=20000)
    tr.add_argument("--text-max-seq-len", type=int, default=64)
    tr.add_argument("--text-enc-depth", type=int, default=4)
    tr.add_argument("--dec-depth", type=int, default=8)
    tr.add_argument("--kernel-size", type=int, default=3)
    tr.add_argument("--dilation", type=int, nargs="+", default=[1, 2, 4], help="cycled over the decoder layers")
    tr.add_argument("--dropout", type=float, default=0.0)
    tr.add_argument("--no-reversible", action="store_true", help="plain (not reversible) stacks")
    tr.add_argument("--sample-text", action="append", default=None, help="prompt for periodic samples (repeat)")
    tr.set_defaults(func=train)

    gen = commands.add_parser("generate", help="generate a video from text")
    gen.add_argument("--model", required=True, help="folder written by train (results/nuwa/nuwa)")
    gen.add_argument("--text", action="append", required=True, help="prompt (repeat for a batch)")
    gen.add_argument("--num-frames", type=int, default=None)
    gen.add_argument("--cond-scale", type=float, default=3.0)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--filter-thres", type=float, default=0.9)
    add_output_arguments(gen, out="video.gif")
    gen.set_defaults(func=generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
