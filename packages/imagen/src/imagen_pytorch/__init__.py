"""Imagen: cascading text-to-image and text-to-video diffusion."""
from imagen_pytorch.__about__ import __version__

__all__ = ["__version__"]
