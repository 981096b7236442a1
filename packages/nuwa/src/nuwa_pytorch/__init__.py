"""NUWA: VQGAN-VAE and 3D nearby-attention transformer for text-to-video (and sketch-to-video)."""

from nuwa_pytorch.__about__ import __version__
from nuwa_pytorch.nuwa import NUWA, NUWASketch
from nuwa_pytorch.sparse_3dna import Sparse3DNA
from nuwa_pytorch.trainer import NUWATrainer, VQGanVAETrainer, WordTokenizer
from nuwa_pytorch.video_audio import CrossModalityCrossAttention, NUWAVideoAudio
from nuwa_pytorch.vqgan_vae import VQGanVAE
from synthesis_core.checkpoint import register_loadable

# The classes a saved config.json may name (`from_pretrained`, `load_model_from_folder`): nothing else is ever
# built from a file.
register_loadable(VQGanVAE)
register_loadable(NUWA)
register_loadable(NUWASketch)
register_loadable(NUWAVideoAudio)

__all__ = [
    "__version__",
    "NUWA",
    "NUWASketch",
    "NUWAVideoAudio",
    "CrossModalityCrossAttention",
    "Sparse3DNA",
    "VQGanVAE",
    "VQGanVAETrainer",
    "NUWATrainer",
    "WordTokenizer",
]
