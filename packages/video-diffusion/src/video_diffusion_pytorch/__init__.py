"""Video Diffusion Models: space-time factored 3D U-Net diffusion for (text-to-)video generation."""

from synthesis_core.checkpoint import register_loadable
from video_diffusion_pytorch.__about__ import __version__
from video_diffusion_pytorch.diffusion import GaussianDiffusion
from video_diffusion_pytorch.trainer import Trainer
from video_diffusion_pytorch.unet import ConvNextBlock, Unet3D

# The classes a saved config.json may name (`from_pretrained`, `load_model_from_folder`): nothing else is ever
# built from a file.
register_loadable(Unet3D)
register_loadable(GaussianDiffusion)

__all__ = ["__version__", "Unet3D", "ConvNextBlock", "GaussianDiffusion", "Trainer"]
