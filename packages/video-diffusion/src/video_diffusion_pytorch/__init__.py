"""Video Diffusion Models: space-time factored 3D U-Net diffusion."""
from video_diffusion_pytorch.__about__ import __version__

__all__ = ["__version__"]
