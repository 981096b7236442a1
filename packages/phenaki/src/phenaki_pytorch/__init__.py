"""Phenaki: C-ViViT video tokenizer and MaskGIT for long text-to-video."""
from phenaki_pytorch.__about__ import __version__

__all__ = ["__version__"]
