"""NUWA: VQGAN-VAE and 3D nearby-attention transformer for text-to-video (and sketch-to-video)."""
from nuwa_pytorch.__about__ import __version__
from nuwa_pytorch.nuwa import NUWA, NUWASketch
from nuwa_pytorch.sparse_3dna import Sparse3DNA
from nuwa_pytorch.trainer import NUWATrainer, VQGanVAETrainer, WordTokenizer
from nuwa_pytorch.vqgan_vae import VQGanVAE

__all__ = [
    "__version__",
    "NUWA",
    "NUWASketch",
    "Sparse3DNA",
    "VQGanVAE",
    "VQGanVAETrainer",
    "NUWATrainer",
    "WordTokenizer",
]
