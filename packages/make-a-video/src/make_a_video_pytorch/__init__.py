"""Make-A-Video: pseudo-3D convolutions and spatio-temporal attention for text-to-video."""
from make_a_video_pytorch.__about__ import __version__

__all__ = ["__version__"]
