"""`phenaki` command line: train the tokenizer, train Phenaki, sample videos.

    phenaki train-tokenizer --data videos/ --image-size 64 --num-frames 17 --output-dir results/cvivit
    phenaki train --tokenizer results/cvivit/cvivit --data videos/ --text-encoder google/t5-v1_1-base \
        --output-dir results/phenaki --sample-text "a red circle moving left"
    phenaki sample --model results/phenaki/phenaki --text "a red circle moving left" --num-frames 17 --out a.gif
    phenaki sample --model results/phenaki/phenaki --story "a red circle moving left=2" \
        --story "a blue square moving up=1.5" --fps 8 --out story.gif

`--shapes N` trains on the built-in captioned shapes videos (no download) instead of a folder. The options are
those of every package's command line (`synthesis_core.cli`).
Nothing is ever asked interactively; `--resume latest` continues from the newest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from synthesis_core import cli

logger = logging.getLogger("phenaki_pytorch.cli")

# the trainers' keywords for the periods of `--save-every` / `--sample-every`
PERIODS = dict(save_every="save_model_every", sample_every="save_results_every")


class _VideosOnly(torch.utils.data.Dataset):
    """Drops the captions of a `(video, caption)` dataset (the tokenizer trains on pixels only)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return item[0] if isinstance(item, (tuple, list)) else item


def train_tokenizer(args: argparse.Namespace) -> int:
    from phenaki_pytorch.cvivit import CViViT
    from phenaki_pytorch.trainer import CViViTTrainer

    cvivit = CViViT(
        dim=args.dim,
        codebook_size=args.codebook_size,
        image_size=args.image_size,
        patch_size=args.patch_size,
        temporal_patch_size=args.temporal_patch_size,
        spatial_depth=args.spatial_depth,
        temporal_depth=args.temporal_depth,
        heads=args.heads,
        dim_head=args.dim_head,
        channels=args.channels,
        quantizer=args.quantizer,
        use_vgg_and_gan=not args.no_gan,
    )
    dataset = None
    if args.shapes is not None:
        dataset = _VideosOnly(cli.shapes_dataset(args, image_size=args.image_size, num_frames=args.num_frames))
    trainer = CViViTTrainer(
        cvivit,
        dataset=dataset,
        folder=args.data,
        num_frames=args.num_frames,
        image_size=args.image_size,
        **cli.training_kwargs(args, **PERIODS),
    )
    trainer.train()
    logger.info("tokenizer saved to %s", Path(args.output_dir) / "cvivit")
    return 0


def train(args: argparse.Namespace) -> int:
    from phenaki_pytorch.cvivit import CViViT
    from phenaki_pytorch.maskgit import MaskGit, TokenCritic
    from phenaki_pytorch.phenaki import Phenaki
    from phenaki_pytorch.trainer import PhenakiTrainer
    from synthesis_core.text import get_encoded_dim

    cvivit = cli.load_model(args.tokenizer, CViViT, option="--tokenizer")
    image_size = args.image_size or (cvivit.image_size[0] if cvivit.image_size is not None else None)
    if image_size is None:
        raise ValueError("--image-size: the tokenizer was built without image_size, pass --image-size")
    max_seq_len = args.max_seq_len or cvivit.num_tokens_per_frames(args.num_frames, image_size=image_size)
    dim_context = get_encoded_dim(args.text_encoder)
    maskgit_kwargs = dict(
        num_tokens=cvivit.codebook_size,
        max_seq_len=max_seq_len,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        dim_head=args.dim_head,
        dim_context=dim_context,
    )
    maskgit = MaskGit(**maskgit_kwargs)
    critic = TokenCritic(**maskgit_kwargs) if args.token_critic else None
    phenaki = Phenaki(
        cvivit=cvivit,
        maskgit=maskgit,
        critic=critic,
        self_critic=args.self_critic,
        text_encoder_name=args.text_encoder,
        critic_loss_weight=1.0 if args.token_critic else None,
    )
    dataset = None
    if args.shapes is not None:
        dataset = cli.shapes_dataset(args, image_size=image_size, num_frames=args.num_frames)
    trainer = PhenakiTrainer(
        phenaki,
        dataset=dataset,
        folder=args.data,
        num_frames=args.num_frames,
        image_size=image_size,
        **cli.training_kwargs(args, **PERIODS),
    )
    trainer.train()
    logger.info("model saved to %s", Path(args.output_dir) / "phenaki")
    return 0


def sample(args: argparse.Namespace) -> int:
    from phenaki_pytorch.phenaki import Phenaki, StorySampler

    phenaki = cli.load_model(args.model, Phenaki, device=cli.resolve_device(args.device))
    cli.replace_text_encoder(phenaki, args.text_encoder)
    if not args.story:
        return cli.sample_and_write(phenaki, args)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    scenes = []
    for entry in args.story:
        prompt, _, seconds = entry.rpartition("=")
        if not prompt:
            raise ValueError(f"--story: expected 'prompt=seconds', got {entry!r}")
        scenes.append((prompt, float(seconds)))
    story = StorySampler(phenaki, fps=args.fps, cond_scale=args.cond_scale, steps=args.steps)
    video, boundaries = story(scenes)
    logger.info("scene boundaries (frames): %s", boundaries)
    cli.write_video(video, cli.output_path(args), fps=args.fps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, commands = cli.command_parser("phenaki", __doc__)

    def add_training_options(p: argparse.ArgumentParser, output_dir: str, sample_text: bool) -> None:
        cli.add_dataset_arguments(p, data_help="folder of videos (gif/mp4/frame folders; captions in name.txt)")
        p.add_argument("--image-size", type=int, default=None)
        p.add_argument("--num-frames", type=int, default=17, help="1 + k * temporal patch size")
        cli.add_training_arguments(p, output_dir=output_dir, sample_text=sample_text)

    tok = cli.add_command(commands, "train-tokenizer", train_tokenizer, "train the C-ViViT video tokenizer")
    add_training_options(tok, "results/cvivit", sample_text=False)
    tok.add_argument("--dim", type=int, default=256)
    tok.add_argument("--codebook-size", type=int, default=1024)
    tok.add_argument("--patch-size", type=int, default=8)
    tok.add_argument("--temporal-patch-size", type=int, default=2)
    tok.add_argument("--spatial-depth", type=int, default=2)
    tok.add_argument("--temporal-depth", type=int, default=2)
    tok.add_argument("--heads", type=int, default=8)
    tok.add_argument("--dim-head", type=int, default=32)
    tok.add_argument("--channels", type=int, default=3)
    tok.add_argument("--quantizer", choices=("vq", "lfq", "fsq"), default="vq")
    tok.add_argument("--no-gan", action="store_true", help="reconstruction + quantizer losses only")
    tok.set_defaults(image_size=64)

    tr = cli.add_command(commands, "train", train, "train Phenaki (MaskGIT) on a trained tokenizer")
    add_training_options(tr, "results/phenaki", sample_text=True)
    tr.add_argument("--tokenizer", required=True, help="folder written by train-tokenizer (results/cvivit/cvivit)")
    tr.add_argument("--text-encoder", default="google/t5-v1_1-base", help="hub name or local folder (T5 or BERT)")
    tr.add_argument("--dim", type=int, default=512)
    tr.add_argument("--depth", type=int, default=6)
    tr.add_argument("--heads", type=int, default=8)
    tr.add_argument("--dim-head", type=int, default=64)
    tr.add_argument("--max-seq-len", type=int, default=None, help="default: the tokens of --num-frames frames")
    critic = tr.add_mutually_exclusive_group()
    critic.add_argument("--self-critic", action="store_true", help="train a critic head on MaskGIT jointly")
    critic.add_argument("--token-critic", action="store_true", help="train a separate TokenCritic jointly")

    sm = cli.add_command(commands, "sample", sample, "generate a video (or a story of scenes)")
    cli.add_sample_arguments(
        sm, model_help="folder written by train (results/phenaki/phenaki)", num_frames=17, text_encoder=True
    )
    sm.add_argument("--story", action="append", default=None, help="'prompt=seconds' scene (repeat, in order)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return cli.run_cli(build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
