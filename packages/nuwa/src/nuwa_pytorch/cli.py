"""`nuwa` command line: train the VQGAN-VAE tokenizer, train NUWA on it, sample videos.

    nuwa train-tokenizer --data images/ --image-size 64 --num-layers 3 --output-dir results/vae
    nuwa train --vae results/vae/vae --data videos/ --num-frames 5 --output-dir results/nuwa \
        --sample-text "a red circle moving left"
    nuwa sample --model results/nuwa/nuwa --text "a red circle moving left" --cond-scale 3 --out video.gif

`train-vae` and `generate` are the earlier names of `train-tokenizer` and `sample`. `--shapes N` trains on the
built-in captioned shapes videos (no download) instead of a folder; `train-tokenizer` reads a folder of images, or
of videos with `--num-frames`. The perceptual loss needs VGG16 weights in the local torch cache, or
`--vgg-weights FILE`, or `--no-gan`. The options are those of every package's command line
(`synthesis_core.cli`). Nothing is asked interactively; `--resume latest` continues.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from synthesis_core import cli

logger = logging.getLogger("nuwa_pytorch.cli")

# the trainers' keywords for the periods of `--save-every` / `--sample-every`
PERIODS = dict(save_every="save_model_every", sample_every="save_results_every")


def train_tokenizer(args: argparse.Namespace) -> int:
    from nuwa_pytorch.trainer import VQGanVAETrainer
    from nuwa_pytorch.vqgan_vae import VQGanVAE
    from synthesis_core.gan import default_vgg

    vgg = default_vgg(args.vgg_weights) if args.vgg_weights is not None and not args.no_gan else None
    vae = VQGanVAE(
        dim=args.dim,
        image_size=args.image_size,
        num_layers=args.num_layers,
        channels=args.channels,
        vq_codebook_size=args.codebook_size,
        vq_codebook_dim=args.codebook_dim,
        num_resnet_blocks=args.num_resnet_blocks,
        vgg=vgg,
        use_vgg_and_gan=not args.no_gan,
    )
    dataset = None
    if args.shapes is not None:
        dataset = cli.shapes_dataset(args, image_size=args.image_size, num_frames=args.num_frames or 4)
    trainer = VQGanVAETrainer(
        vae, dataset=dataset, folder=args.data, num_frames=args.num_frames, **cli.training_kwargs(args, **PERIODS)
    )
    trainer.train()
    logger.info("VAE saved to %s", Path(args.output_dir) / "vae")
    return 0


def train(args: argparse.Namespace) -> int:
    from nuwa_pytorch.nuwa import NUWA
    from nuwa_pytorch.trainer import NUWATrainer, WordTokenizer
    from nuwa_pytorch.vqgan_vae import VQGanVAE

    vae = cli.load_model(args.vae, VQGanVAE, option="--vae")
    tokenizer, dataset = None, None
    if args.shapes is not None:
        from synthesis_core.shapes import all_captions

        dataset = cli.shapes_dataset(args, image_size=vae.image_size, num_frames=args.num_frames)
        tokenizer = WordTokenizer.from_captions(all_captions())
    nuwa = NUWA(
        vae=vae,
        dim=args.dim,
        text_num_tokens=args.text_num_tokens,
        text_enc_depth=args.text_enc_depth,
        text_enc_heads=args.heads,
        text_max_seq_len=args.text_max_seq_len,
        max_video_frames=args.num_frames,
        dec_depth=args.dec_depth,
        dec_heads=args.heads,
        dec_reversible=not args.no_reversible,
        enc_reversible=not args.no_reversible,
        sparse_3dna_kernel_size=args.kernel_size,
        sparse_3dna_dilation=tuple(args.dilation),
        attn_dropout=args.dropout,
        ff_dropout=args.dropout,
    )
    trainer = NUWATrainer(
        nuwa,
        dataset=dataset,
        folder=args.data,
        num_frames=args.num_frames,
        tokenizer=tokenizer,
        **cli.training_kwargs(args, **PERIODS),
    )
    trainer.train()
    logger.info("model saved to %s", Path(args.output_dir) / "nuwa")
    return 0


def sample(args: argparse.Namespace) -> int:
    from nuwa_pytorch.nuwa import NUWA
    from nuwa_pytorch.trainer import WordTokenizer

    if not args.text:
        raise ValueError("--text: NUWA generates from a prompt; give --text")
    device = cli.resolve_device(args.device)
    nuwa = cli.load_model(args.model, NUWA, device=device)
    tokenizer = WordTokenizer.load(Path(args.model))
    token_ids = tokenizer.encode(args.text, max_length=nuwa.text_max_seq_len, device=device)
    return cli.sample_and_write(
        nuwa, args, texts=token_ids, filter_thres=args.filter_thres, temperature=args.temperature
    )


def build_parser() -> argparse.ArgumentParser:
    parser, commands = cli.command_parser("nuwa", __doc__)

    vae = cli.add_command(
        commands, "train-tokenizer", train_tokenizer, "train the VQGAN-VAE image tokenizer", aliases=("train-vae",)
    )
    cli.add_dataset_arguments(vae, data_help="folder of images, or of videos with --num-frames")
    cli.add_training_arguments(vae, output_dir="results/vae", sample_text=False)
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

    tr = cli.add_command(commands, "train", train, "train NUWA on a trained VAE (videos with name.txt captions)")
    cli.add_dataset_arguments(tr, data_help="folder of videos (gif/mp4/frame folders; captions in name.txt)")
    cli.add_training_arguments(tr, output_dir="results/nuwa")
    tr.add_argument("--vae", required=True, help="folder written by train-tokenizer (results/vae/vae)")
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

    sm = cli.add_command(commands, "sample", sample, "generate videos from text", aliases=("generate",))
    cli.add_sample_arguments(sm, model_help="folder written by train (results/nuwa/nuwa)")
    sm.add_argument("--temperature", type=float, default=1.0)
    sm.add_argument("--filter-thres", type=float, default=0.9)
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
