"""`phenaki` command line: train the tokenizer, train Phenaki, sample videos.

    phenaki train-tokenizer --data videos/ --image-size 64 --num-frames 17 --results-folder results/cvivit
    phenaki train --tokenizer results/cvivit/cvivit --data videos/ --text-encoder google/t5-v1_1-base \
        --results-folder results/phenaki --sample-text "a red circle moving left"
    phenaki sample --model results/phenaki/phenaki --text "a red circle moving left" --num-frames 17 --out a.gif
    phenaki sample --model results/phenaki/phenaki --story "a red circle moving left=2" \
        --story "a blue square moving up=1.5" --fps 8 --out story.gif

`--shapes N` trains on the built-in captioned shapes videos (no download) instead of a folder.
Nothing is ever asked interactively; `--resume latest` continues from the newest checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

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

logger = logging.getLogger("phenaki_pytorch.cli")


def _dataset(args: argparse.Namespace, with_captions: bool):
    if exists(args.shapes):
        from synthesis_core.datasets import ShapesVideoDataset

        dataset = ShapesVideoDataset(args.shapes, image_size=args.image_size, num_frames=args.num_frames,
                                     seed=args.seed or 0)
        return dataset if with_captions else _VideosOnly(dataset)
    return None


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

    cvivit = CViViT(dim=args.dim, codebook_size=args.codebook_size, image_size=args.image_size,
                    patch_size=args.patch_size, temporal_patch_size=args.temporal_patch_size,
                    spatial_depth=args.spatial_depth, temporal_depth=args.temporal_depth, heads=args.heads,
                    dim_head=args.dim_head, channels=args.channels, quantizer=args.quantizer,
                    use_vgg_and_gan=not args.no_gan)
    dataset = _dataset(args, with_captions=False)
    trainer = CViViTTrainer(cvivit, dataset=dataset, folder=None if exists(dataset) else args.data,
                            num_frames=args.num_frames, image_size=args.image_size, resume=args.resume, **training_kwargs(args))
    trainer.train()
    logger.info("tokenizer saved to %s", Path(args.results_folder) / "cvivit")
    return 0


def train(args: argparse.Namespace) -> int:
    from phenaki_pytorch.maskgit import MaskGit, TokenCritic
    from phenaki_pytorch.phenaki import Phenaki
    from phenaki_pytorch.trainer import PhenakiTrainer
    from synthesis_core.checkpoint import load_model_from_folder
    from synthesis_core.text import get_encoded_dim

    cvivit = load_model_from_folder(args.tokenizer)
    image_size = args.image_size or (cvivit.image_size[0] if exists(cvivit.image_size) else None)
    if not exists(image_size):
        raise ValueError("--image-size: the tokenizer was built without image_size, pass --image-size")
    max_seq_len = args.max_seq_len or cvivit.num_tokens_per_frames(args.num_frames, image_size=image_size)
    dim_context = get_encoded_dim(args.text_encoder)
    maskgit_kwargs = dict(num_tokens=cvivit.codebook_size, max_seq_len=max_seq_len, dim=args.dim, depth=args.depth,
                          heads=args.heads, dim_head=args.dim_head, dim_context=dim_context)
    maskgit = MaskGit(**maskgit_kwargs)
    critic = TokenCritic(**maskgit_kwargs) if args.token_critic else None
    phenaki = Phenaki(cvivit=cvivit, maskgit=maskgit, critic=critic, self_critic=args.self_critic,
                      text_encoder_name=args.text_encoder, critic_loss_weight=1.0 if args.token_critic else None)
    args.image_size = image_size
    dataset = _dataset(args, with_captions=True)
    trainer = PhenakiTrainer(phenaki, dataset=dataset, folder=None if exists(dataset) else args.data,
                             num_frames=args.num_frames, image_size=image_size, sample_texts=args.sample_text,
                             resume=args.resume, **training_kwargs(args))
    trainer.train()
    logger.info("model saved to %s", Path(args.results_folder) / "phenaki")
    return 0


def sample(args: argparse.Namespace) -> int:
    from phenaki_pytorch.phenaki import StorySampler
    from synthesis_core.checkpoint import load_model_from_folder

    device = resolve_device(args.device)
    phenaki = load_model_from_folder(args.model, map_location=device)
    if exists(args.text_encoder) and exists(phenaki.text_encoder):
        from synthesis_core.text import TextEncoder

        phenaki.text_encoder = TextEncoder(args.text_encoder, max_length=phenaki.text_encoder.max_length)
    if exists(args.seed):
        torch.manual_seed(args.seed)
    if args.story:
        scenes = []
        for entry in args.story:
            prompt, _, seconds = entry.rpartition("=")
            if not prompt:
                raise ValueError(f"--story: expected 'prompt=seconds', got {entry!r}")
            scenes.append((prompt, float(seconds)))
        sampler = StorySampler(phenaki, fps=args.fps, cond_scale=args.cond_scale, steps=args.sample_steps)
        video, boundaries = sampler(scenes)
        logger.info("scene boundaries (frames): %s", boundaries)
    else:
        texts = args.text or None
        video = phenaki.sample(texts=texts, num_frames=args.num_frames, cond_scale=args.cond_scale,
                               steps=args.sample_steps, batch_size=args.batch_size, progress=True)
    write_video(video, args.out, fps=args.fps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phenaki", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add_training_options(p: argparse.ArgumentParser, results_folder: str) -> None:
        add_dataset_arguments(p, data_help="folder of videos (gif/mp4/frame folders; captions in name.txt)")
        p.add_argument("--image-size", type=int, default=None)
        p.add_argument("--num-frames", type=int, default=17, help="1 + k * temporal patch size")
        add_training_arguments(p, results_folder=results_folder)

    tok = commands.add_parser("train-tokenizer", help="train the C-ViViT video tokenizer")
    add_training_options(tok, "results/cvivit")
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
    tok.set_defaults(func=train_tokenizer, image_size=64)

    tr = commands.add_parser("train", help="train Phenaki (MaskGIT) on a trained tokenizer")
    add_training_options(tr, "results/phenaki")
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
    tr.add_argument("--sample-text", action="append", default=None, help="prompt for periodic samples (repeat)")
    tr.set_defaults(func=train)

    sm = commands.add_parser("sample", help="generate a video (or a story of scenes)")
    sm.add_argument("--model", required=True, help="folder written by train (results/phenaki/phenaki)")
    sm.add_argument("--text", action="append", default=None, help="prompt (repeat for a batch)")
    sm.add_argument("--story", action="append", default=None, help="'prompt=seconds' scene (repeat, in order)")
    sm.add_argument("--num-frames", type=int, default=17)
    sm.add_argument("--batch-size", type=int, default=1)
    sm.add_argument("--cond-scale", type=float, default=3.0)
    sm.add_argument("--sample-steps", type=int, default=None)
    sm.add_argument("--text-encoder", default=None, help="override the text encoder (e.g. a local folder)")
    add_output_arguments(sm, out="sample.gif")
    sm.set_defaults(func=sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv, logger)


if __name__ == "__main__":
    sys.exit(main())
