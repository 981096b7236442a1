"""NUWA: VQGAN-VAE and 3D nearby-attention transformer for text-to-video."""
from nuwa_pytorch.__about__ import __version__

__all__ = ["__version__"]
