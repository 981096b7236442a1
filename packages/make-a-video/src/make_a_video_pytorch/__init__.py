"""Make-A-Video: pseudo-3D convolutions and spatio-temporal attention for text-to-video.

The README's building blocks (`Pseudo3DConv`, `SpatioTemporalAttention`; the published package's names
`PseudoConv3d`, `ResnetBlock`, `Downsample`, `Upsample` too), the U-Net made of them (`SpaceTimeUnet`), the diffusion model around it (`MakeAVideo`), frame interpolation (`FrameInterpolator`) and
the trainer (`MakeAVideoTrainer`, also behind the `make-a-video` command).
"""

from make_a_video_pytorch.__about__ import __version__
from make_a_video_pytorch.blocks import Downsample, Pseudo3DConv, PseudoConv3d, SpatioTemporalAttention, Upsample
from make_a_video_pytorch.make_a_video import FrameInterpolator, MakeAVideo
from make_a_video_pytorch.trainer import MakeAVideoTrainer
from make_a_video_pytorch.unet import ResnetBlock, SpaceTimeResnetBlock, SpaceTimeUnet
from synthesis_core.checkpoint import register_loadable

# The classes a saved config.json may name (`from_pretrained`, `load_model_from_folder`): nothing else is ever
# built from a file. FrameInterpolator passes its **kwargs on to MakeAVideo.
register_loadable(SpaceTimeUnet)
register_loadable(MakeAVideo)
register_loadable(FrameInterpolator, forwards_kwargs_to=MakeAVideo)

__all__ = [
    "Pseudo3DConv",
    "PseudoConv3d",
    "SpatioTemporalAttention",
    "SpaceTimeResnetBlock",
    "ResnetBlock",
    "Downsample",
    "Upsample",
    "SpaceTimeUnet",
    "MakeAVideo",
    "FrameInterpolator",
    "MakeAVideoTrainer",
    "__version__",
]
