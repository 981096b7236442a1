"""Phenaki: C-ViViT video tokenizer and MaskGIT for long text-to-video."""
from phenaki_pytorch.__about__ import __version__
from phenaki_pytorch.cvivit import CViViT
from phenaki_pytorch.maskgit import CriticTrainer, MaskGit, SelfCritic, TokenCritic
from phenaki_pytorch.phenaki import Phenaki, StorySampler, make_video
from phenaki_pytorch.trainer import CViViTTrainer, PhenakiTrainer

__all__ = [
    "__version__",
    "CViViT",
    "MaskGit",
    "TokenCritic",
    "SelfCritic",
    "CriticTrainer",
    "Phenaki",
    "make_video",
    "StorySampler",
    "CViViTTrainer",
    "PhenakiTrainer",
]
