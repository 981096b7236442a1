"""Video Diffusion Models: space-time factored 3D U-Net diffusion for (text-to-)video generation."""
from video_diffusion_pytorch.__about__ import __version__
from video_diffusion_pytorch.diffusion import GaussianDiffusion
from video_diffusion_pytorch.trainer import Trainer
from video_diffusion_pytorch.unet import ConvNextBlock, Unet3D

__all__ = ["__version__", "Unet3D", "ConvNextBlock", "GaussianDiffusion", "Trainer"]
