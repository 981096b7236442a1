"""Generic layers shared by the image and video models: norms, feed-forwards, time embeddings,
position generators, resampling and resnet blocks.

Layouts: tokens are `(b, n, dim)`; feature maps are channels-first `(b, c, h, w)` and videos `(b, c, t, h, w)`.
The 2D resampling layers and `ResnetBlock` accept videos and apply themselves per frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from synthesis_core.checks import check_divisible, check_positive_int, check_tensor
from synthesis_core.chunked import chunked_feedforward
from synthesis_core.utils import default

__all__ = [
    "LayerNorm",
    "ChannelLayerNorm",
    "GEGLU",
    "FeedForward",
    "SinusoidalPosEmb",
    "LearnedSinusoidalPosEmb",
    "TimestepEmbedding",
    "FrameEmbedding",
    "position_grid",
    "Upsample",
    "Downsample",
    "ResnetBlock",
    "Residual",
]


def _per_frame(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a 2D layer to a 4D image batch, or to every frame of a 5D video batch `(b, c, t, h, w)`."""
    if x.ndim == 4:
        return fn(x)
    if x.ndim != 5:
        raise ValueError(f"x: expected (b, c, h, w) or (b, c, t, h, w), got shape {tuple(x.shape)}")
    frames = x.shape[2]
    x = rearrange(x, "b c t h w -> (b t) c h w")
    x = fn(x)
    return rearrange(x, "(b t) c h w -> b c t h w", t=frames)


# normalisation


class LayerNorm(nn.Module):
    """Layer norm over the last dimension with a learnable gain and no bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.gamma.to(x.dtype), None, eps=self.eps).to(x.dtype)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel dimension (dim 1) of `(b, c, ...)` feature maps, learnable gain, no bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # float32 statistics: variance in bf16 is too coarse for small feature maps
        x_float = x.float()
        var, mean = torch.var_mean(x_float, dim=1, unbiased=False, keepdim=True)
        gamma = self.gamma.view(1, -1, *((1,) * (x.ndim - 2)))
        return ((x_float - mean) * torch.rsqrt(var + self.eps) * gamma).to(x.dtype)


# feed-forwards


class GEGLU(nn.Module):
    """Gated GELU: splits the last dimension in two halves, `x * gelu(gate)`."""

    def forward(self, x: Tensor) -> Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Position-wise feed-forward on `(b, n, dim)`: GEGLU by default (or Linear-GELU-Linear with `glu=False`).

    `chunk_size` runs the sequence (dim 1) in chunks, identical results with a smaller peak memory.
    `pre_norm=True` puts a `LayerNorm` in front (handy for residual blocks).
    """

    def __init__(
        self,
        dim: int,
        mult: float = 4,
        glu: bool = True,
        dropout: float = 0.0,
        chunk_size: int | None = None,
        dim_out: int | None = None,
        pre_norm: bool = False,
        zero_init_output: bool = False,
    ):
        super().__init__()
        inner_dim = int(dim * mult)
        dim_out = default(dim_out, dim)
        self.chunk_size = chunk_size
        project_in = (
            nn.Sequential(nn.Linear(dim, inner_dim * 2), GEGLU())
            if glu
            else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        )
        self.net = nn.Sequential(
            LayerNorm(dim) if pre_norm else nn.Identity(),
            project_in,
            nn.Dropout(dropout),
            nn.Linear(inner_dim, dim_out),
        )
        if zero_init_output:
            output = cast(nn.Linear, self.net[-1])
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)

    def forward(self, x: Tensor) -> Tensor:
        return chunked_feedforward(self.net, x, self.chunk_size, dim=1)


# time embeddings


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of float times `(b,) -> (b, dim)` (sin half then cos half)."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        check_positive_int("dim", dim)
        check_divisible("dim", dim, 2)
        self.dim = dim
        self.theta = theta

    def forward(self, x: Tensor) -> Tensor:
        half_dim = self.dim // 2
        scale = math.log(self.theta) / max(half_dim - 1, 1)
        freqs = torch.exp(torch.arange(half_dim, device=x.device, dtype=torch.float32) * -scale)
        args = x.float()[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class LearnedSinusoidalPosEmb(nn.Module):
    """Learned (random Fourier) sinusoidal embedding: `(b,) -> (b, dim + 1)` (the time itself is kept too)."""

    def __init__(self, dim: int, random: bool = False):
        super().__init__()
        check_divisible("dim", dim, 2)
        self.weights = nn.Parameter(torch.randn(dim // 2), requires_grad=not random)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()[:, None]
        freqs = x * self.weights[None, :] * 2 * math.pi
        return torch.cat((x, freqs.sin(), freqs.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    """Diffusion time conditioning: `(b,)` int or float times -> `(b, time_dim)` (sinusoidal or learned + MLP)."""

    def __init__(self, dim: int, time_dim: int | None = None, learned: bool = False):
        super().__init__()
        time_dim = default(time_dim, dim * 4)
        self.pos_emb = LearnedSinusoidalPosEmb(dim) if learned else SinusoidalPosEmb(dim)
        pos_dim = dim + 1 if learned else dim
        self.mlp = nn.Sequential(nn.Linear(pos_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.time_dim = time_dim

    def forward(self, times: Tensor) -> Tensor:
        check_tensor("times", times, ndim=1, names=("batch",))
        return self.mlp(self.pos_emb(times))


class FrameEmbedding(nn.Module):
    """Mixes the position of each frame in its clip into a per-sample conditioning vector.

    Video U-Nets fold the frames into the batch and give every frame the same time/text embedding; their temporal
    layers (attention with a relative position bias, convolutions over time) see only distances between frames. So
    at high noise, where the noisy input says nothing yet, no layer knows which frame it is drawing, and the
    network cannot put "a circle moving left" on the right in the first frame and on the left in the last: the
    direction of motion is left to the noise.

    Each frame gets `emb + mlp([emb, sinusoid(index)]) + tau * motion(emb)`, with `tau` the frame's signed place
    in the clip (-1 for the first frame, +1 for the last). The last term is why motion follows the caption: where
    content goes is a pure interaction of condition and time ("left" says nothing about position averaged over the
    clip, and neither does the frame index averaged over directions), and an MLP over their sum finds a pure
    interaction only after a long plateau (measured: none of it after 600 steps on the shapes data, while the
    product term learns it in 300). `tau * motion(emb)` makes it first order: the condition picks a direction in
    embedding space, the frame's place in the clip says how far along it to go.

    `forward(emb (b, d), frames) -> (b * frames, d)` (frames folded into the batch, frame index fastest).
    The last layers start at zero, so a model fine-tuned from an image model starts exactly where it was, and a
    checkpoint saved before the motion term existed loads with it at zero (the same function as before).
    """

    def __init__(self, dim: int, pos_dim: int = 16):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("pos_dim", pos_dim)
        self.pos_emb = SinusoidalPosEmb(pos_dim)
        self.mlp = nn.Sequential(nn.Linear(dim + pos_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.motion = nn.Linear(dim, dim)
        for output in (cast(nn.Linear, self.mlp[-1]), self.motion):
            nn.init.zeros_(output.weight)
            nn.init.zeros_(output.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint of this layer from before the motion term (its MLP without `motion.*`): the term loads as
        # zero, which is exactly the model that was saved. A partial state dict without this layer is left alone.
        if f"{prefix}mlp.0.weight" in state_dict:
            for name, parameter in self.motion.named_parameters():
                state_dict.setdefault(f"{prefix}motion.{name}", torch.zeros_like(parameter))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, emb: Tensor, frames: int) -> Tensor:
        check_tensor("emb", emb, ndim=2, names=("batch", "dim"))
        check_positive_int("frames", frames)
        emb = repeat(emb, "b d -> (b t) d", t=frames)
        index = repeat(torch.arange(frames, device=emb.device), "t -> (b t)", b=emb.shape[0] // frames)
        position = self.pos_emb(index).to(emb.dtype)
        tau = (
            (2 * index.to(emb.dtype) / max(frames - 1, 1) - 1)
            if frames > 1
            else torch.zeros_like(index, dtype=emb.dtype)
        )
        return emb + self.mlp(torch.cat((emb, position), dim=-1)) + rearrange(tau, "n -> n 1") * self.motion(emb)


def position_grid(x: Tensor) -> Tensor:
    """`(n, 2, h, w)` channels holding the row and the column of every pixel of `x (n, c, h, w)`, in [-1, 1].

    Concatenated to a convolutional network's input, they tell it where it is in the frame, which zero padding
    tells only near the borders ("CoordConv", Liu et al. 2018).
    """
    check_tensor("x", x, ndim=4, names=("batch", "channels", "height", "width"))
    height, width = x.shape[-2:]
    rows = torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype)
    cols = torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return repeat(grid, "c h w -> n c h w", n=x.shape[0])


# resampling


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv; images or (per frame) videos."""

    def __init__(self, dim: int, dim_out: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(dim, default(dim_out, dim), 3, padding=1)

    def _forward_2d(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    def forward(self, x: Tensor) -> Tensor:
        return _per_frame(self._forward_2d, x)


class Downsample(nn.Module):
    """x2 downsampling without information loss: pixel-unshuffle (space-to-depth) + 1x1 conv."""

    def __init__(self, dim: int, dim_out: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(dim * 4, default(dim_out, dim), 1)

    def _forward_2d(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height % 2 or width % 2:
            raise ValueError(f"x: Downsample needs even height and width, got {height}x{width}")
        x = rearrange(x, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2)
        return self.conv(x)

    def forward(self, x: Tensor) -> Tensor:
        return _per_frame(self._forward_2d, x)


# resnet block


class _Block(nn.Module):
    """GroupNorm -> (FiLM) -> SiLU -> dropout -> 3x3 conv."""

    def __init__(self, dim: int, dim_out: int, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Conv2d(dim, dim_out, 3, padding=1)

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        # autocast computes GroupNorm in float32; cast back so bf16 training stores bf16 activations
        x = self.norm(x).to(x.dtype)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1).to(x.dtype) + shift.to(x.dtype)
        return self.proj(self.dropout(self.act(x)))


class ResnetBlock(nn.Module):
    """Residual block of two GroupNorm-SiLU-conv layers with FiLM (scale, shift) from a time embedding.

    `forward(x (b, c, h, w) or (b, c, t, h, w), time_emb=None (b, time_emb_dim))`; videos go frame by frame.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        time_emb_dim: int | None = None,
        groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        check_divisible("dim", dim, groups, divisor_name="groups")
        check_divisible("dim_out", dim_out, groups, divisor_name="groups")
        self.time_mlp = (
            nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, dim_out * 2)) if time_emb_dim is not None else None
        )
        self.block1 = _Block(dim, dim_out, groups=groups)
        self.block2 = _Block(dim_out, dim_out, groups=groups, dropout=dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, time_emb: Tensor | None = None) -> Tensor:
        is_video = x.ndim == 5
        if is_video:
            frames = x.shape[2]
            x = rearrange(x, "b c t h w -> (b t) c h w")
        elif x.ndim != 4:
            raise ValueError(f"x: expected (b, c, h, w) or (b, c, t, h, w), got shape {tuple(x.shape)}")

        scale_shift = None
        if self.time_mlp is not None:
            if time_emb is None:
                raise ValueError("time_emb: this ResnetBlock was built with time_emb_dim and needs a time embedding")
            film = self.time_mlp(time_emb)
            if is_video:
                film = repeat(film, "b d -> (b t) d", t=frames)
            film = rearrange(film, "b d -> b d 1 1")
            scale_shift = film.chunk(2, dim=1)

        h = self.block1(x)
        h = self.block2(h, scale_shift=scale_shift)
        out = h + self.res_conv(x)

        if is_video:
            out = rearrange(out, "(b t) c h w -> b c t h w", t=frames)
        return out


class Residual(nn.Module):
    """`x + fn(x, **kwargs)`."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        return self.fn(x, **kwargs) + x
