"""Phenaki: C-ViViT video tokenizer and MaskGIT for long text-to-video."""

from phenaki_pytorch.__about__ import __version__
from phenaki_pytorch.cvivit import CViViT
from phenaki_pytorch.maskgit import CriticTrainer, MaskGit, SelfCritic, TokenCritic
from phenaki_pytorch.phenaki import Phenaki, StorySampler, make_video
from phenaki_pytorch.trainer import CViViTTrainer, PhenakiTrainer
from synthesis_core.checkpoint import register_loadable

# The classes a saved config.json may name (`from_pretrained`, `load_model_from_folder`): nothing else is ever
# built from a file.
register_loadable(CViViT)
register_loadable(MaskGit)
register_loadable(TokenCritic)
register_loadable(Phenaki)

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
