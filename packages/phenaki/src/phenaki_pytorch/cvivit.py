"""C-ViViT: the causal video tokenizer of Phenaki.

A video `(b, c, 1 + k * temporal_patch_size, h, w)` is cut into patches: the first frame on its own (so a
video tokenizer is also an image tokenizer, and a video can be continued from its first frame), then groups of
`temporal_patch_size` frames. Each group becomes a grid of `(h / patch_size) x (w / patch_size)` tokens. A
spatial transformer mixes the tokens of each frame (continuous 2D position bias, so any image size works), a
causal temporal transformer mixes each spatial position across time (continuous 1D bias; a token never sees a
later frame), and a vector quantizer turns every token into a codebook index. The decoder mirrors the encoder.

Training (VQGAN recipe): reconstruction MSE + quantizer loss + LPIPS-style perceptual loss + an adversarial loss
from a StyleGAN-like discriminator on one random frame per video, weighted adaptively against the reconstruction
gradient at the last layer. The discriminator is trained by a separate call with `return_discr_loss=True`.

Pixel values are in [0, 1] at the boundary (inputs and decoded videos); the model works in [-1, 1]. Inputs are read
by the rule every package shares (`synthesis_core.checks.check_pixels`: [-1, 1] batches with a warning when clamped,
uint8 divided by 255, other float dtypes cast to the model's; NaN / inf, 0-255 floats, another device or an empty
batch refused), so a bad batch never reaches the codebook.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import Tensor, nn

from synthesis_core.attention import ContinuousPositionBias, Transformer
from synthesis_core.checkpoint import (
    WEIGHTS_NAME,
    PretrainedMixin,
    load_checkpoint,
    load_state_dict_checked,
    load_torch_weights_only,
)
from synthesis_core.checks import (
    check_choice,
    check_device,
    check_embeddings,
    check_in_range,
    check_not_empty,
    check_pixels,
    check_positive_int,
    check_tensor,
)
from synthesis_core.gan import (
    Discriminator,
    LazyPerceptualLoss,
    adaptive_generator_weight,
    bce_discr_loss,
    bce_gen_loss,
    gradient_penalty,
    hinge_discr_loss,
    hinge_gen_loss,
)
from synthesis_core.quantize import FSQ, LFQ, VectorQuantize, make_quantizer
from synthesis_core.utils import exists

logger = logging.getLogger(__name__)

__all__ = ["CViViT", "CViViTLosses", "EncodeOutput"]


class EncodeOutput(NamedTuple):
    """What `CViViT.encode` returns: quantized tokens `(b, t, h, w, dim)`, their codebook indices `(b, t, h, w)`
    and the quantizer's loss (commitment etc.)."""

    tokens: Tensor
    indices: Tensor
    quantizer_loss: Tensor


class CViViTLosses(NamedTuple):
    """The terms of the generator loss (detached), for logging."""

    recon: Tensor
    quantizer: Tensor
    perceptual: Tensor
    generator: Tensor
    adaptive_weight: Tensor


def _frame_per_video(video: Tensor, frame_indices: Tensor) -> Tensor:
    """Pick one frame per batch item: `(b, c, t, h, w), (b,) -> (b, c, h, w)`."""
    batch_indices = torch.arange(video.shape[0], device=video.device)
    return video[batch_indices, :, frame_indices]


class CViViT(PretrainedMixin, nn.Module):
    """Causal video tokenizer with vector quantization (and the VQGAN losses to train it).

    ```
    cvivit = CViViT(dim=512, codebook_size=5000, patch_size=32, temporal_patch_size=2,
                    spatial_depth=4, temporal_depth=4, dim_head=64, heads=8)
    loss = cvivit(video)                               # video (b, 3, 1 + k * 2, 256, 256) in [0, 1]
    discr_loss = cvivit(video, return_discr_loss=True)  # the discriminator's step
    ids = cvivit(video, return_only_codebook_ids=True)  # (b, 1 + k, 8, 8)
    video = cvivit.decode_from_codebook_indices(ids)    # (b, 3, 1 + k * 2, 256, 256)
    ```
    `image_size` is optional: the position biases are continuous, so any size divisible by `patch_size` works;
    when given it is the default frame size for `num_tokens_per_frames` and for decoding flat index sequences.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        patch_size: int | tuple[int, int],
        temporal_patch_size: int = 2,
        spatial_depth: int = 4,
        temporal_depth: int = 4,
        image_size: int | tuple[int, int] | None = None,
        dim_head: int = 64,
        heads: int = 8,
        channels: int = 3,
        ff_mult: float = 4.0,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        quantizer: str = "vq",
        quantizer_kwargs: dict | None = None,
        use_vgg_and_gan: bool = True,
        vgg: nn.Module | None = None,
        discr_base_dim: int = 16,
        discr_layers: int = 4,
        use_hinge_loss: bool = True,
        perceptual_loss_weight: float = 1.0,
        gan_loss_weight: float = 1.0,
        grad_penalty_weight: float = 10.0,
        lookup_free_quantization: bool | None = None,
        lookup_free_quantization_kwargs: dict | None = None,
        discr_attn_res_layers: Sequence[int] | None = None,
    ):
        super().__init__()
        # phenaki-pytorch 0.5 spellings: lookup_free_quantization(_kwargs) pick the quantizer
        if exists(lookup_free_quantization):
            wanted = "lfq" if lookup_free_quantization else "vq"
            if quantizer not in ("vq", wanted):
                raise ValueError(
                    f"lookup_free_quantization={lookup_free_quantization} contradicts "
                    f"quantizer={quantizer!r}; pass only quantizer="
                )
            quantizer = wanted
        if exists(lookup_free_quantization_kwargs):
            if quantizer != "lfq":
                raise ValueError(
                    "lookup_free_quantization_kwargs: only used with lookup_free_quantization=True "
                    "(quantizer='lfq'); pass quantizer_kwargs= for other quantizers"
                )
            if exists(quantizer_kwargs):
                raise ValueError("lookup_free_quantization_kwargs: pass either it or quantizer_kwargs, not both")
            quantizer_kwargs = dict(lookup_free_quantization_kwargs)
        if discr_attn_res_layers:
            raise ValueError(
                f"discr_attn_res_layers={tuple(discr_attn_res_layers)}: the discriminator here has no "
                "attention layers (synthesis_core.gan.Discriminator, residual convolutions only); leave "
                "it out or pass ()"
            )
        check_positive_int("dim", dim)
        check_positive_int("codebook_size", codebook_size)
        check_positive_int("temporal_patch_size", temporal_patch_size)
        check_positive_int("spatial_depth", spatial_depth)
        check_positive_int("temporal_depth", temporal_depth)
        check_positive_int("channels", channels)
        check_choice("quantizer", quantizer, ("vq", "lfq", "fsq"))
        check_in_range("perceptual_loss_weight", perceptual_loss_weight, 0.0, None)
        check_in_range("gan_loss_weight", gan_loss_weight, 0.0, None)
        self.patch_size = _pair("patch_size", patch_size)
        self.image_size = _pair("image_size", image_size) if image_size is not None else None
        if exists(self.image_size):
            for name, size, patch in zip(("height", "width"), self.image_size, self.patch_size):
                if size % patch != 0:
                    raise ValueError(f"image_size: the {name} {size} is not divisible by patch_size {patch}")

        self.dim = dim
        self.channels = channels
        self.temporal_patch_size = temporal_patch_size
        patch_height, patch_width = self.patch_size
        first_patch_dim = channels * patch_height * patch_width
        rest_patch_dim = first_patch_dim * temporal_patch_size

        # patch embeddings: the first frame alone, the rest in groups of temporal_patch_size frames
        self.to_first_frame_tokens = nn.Sequential(
            Rearrange("b c 1 (h p1) (w p2) -> b 1 h w (c p1 p2)", p1=patch_height, p2=patch_width),
            nn.LayerNorm(first_patch_dim),
            nn.Linear(first_patch_dim, dim),
            nn.LayerNorm(dim),
        )
        self.to_rest_frame_tokens = nn.Sequential(
            Rearrange(
                "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)",
                pt=temporal_patch_size,
                p1=patch_height,
                p2=patch_width,
            ),
            nn.LayerNorm(rest_patch_dim),
            nn.Linear(rest_patch_dim, dim),
            nn.LayerNorm(dim),
        )

        # one position-bias MLP per axis, shared by the encoder and the decoder (it encodes geometry, not content)
        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=dim, heads=heads, num_dims=2)
        self.temporal_rel_pos_bias = ContinuousPositionBias(dim=dim, heads=heads, num_dims=1)

        transformer_kwargs: dict[str, Any] = dict(
            dim=dim, dim_head=dim_head, heads=heads, ff_mult=ff_mult, attn_dropout=attn_dropout, ff_dropout=ff_dropout
        )
        self.enc_spatial_transformer = Transformer(depth=spatial_depth, **transformer_kwargs)
        self.enc_temporal_transformer = Transformer(depth=temporal_depth, causal=True, **transformer_kwargs)

        self.quantizer_kind = quantizer
        # cast: make_quantizer builds one of these three (typed as nn.Module there)
        self.vq = cast(
            "VectorQuantize | LFQ | FSQ", make_quantizer(quantizer, dim, codebook_size, **(quantizer_kwargs or {}))
        )
        # FSQ rounds the size up to a product of levels: the vocabulary is what the quantizer really has
        self.codebook_size = self.vq.codebook_size

        self.dec_temporal_transformer = Transformer(depth=temporal_depth, causal=True, **transformer_kwargs)
        self.dec_spatial_transformer = Transformer(depth=spatial_depth, **transformer_kwargs)

        self.to_first_frame_pixels = nn.Sequential(
            nn.Linear(dim, first_patch_dim),
            Rearrange("b 1 h w (c p1 p2) -> b c 1 (h p1) (w p2)", p1=patch_height, p2=patch_width),
        )
        self.to_rest_frame_pixels = nn.Sequential(
            nn.Linear(dim, rest_patch_dim),
            Rearrange(
                "b t h w (c pt p1 p2) -> b c (t pt) (h p1) (w p2)",
                pt=temporal_patch_size,
                p1=patch_height,
                p2=patch_width,
            ),
        )

        # VQGAN losses
        self.use_vgg_and_gan = use_vgg_and_gan
        self.use_hinge_loss = use_hinge_loss
        self.perceptual_loss_weight = perceptual_loss_weight
        self.gan_loss_weight = gan_loss_weight
        self.grad_penalty_weight = grad_penalty_weight
        self.discr = (
            Discriminator(dim=discr_base_dim, channels=channels, num_layers=discr_layers) if use_vgg_and_gan else None
        )
        self.discr_downsample_factor = 2 ** (discr_layers - 1)
        self.discr_loss_fn = hinge_discr_loss if use_hinge_loss else bce_discr_loss
        self.gen_loss_fn = hinge_gen_loss if use_hinge_loss else bce_gen_loss

        # The perceptual network is frozen and pretrained: it is kept out of the state dict (plain attribute,
        # not a registered submodule) and resolved lazily, so building the model never needs VGG weights; without
        # them the model trains without the perceptual term after one warning (the rule VQGanVAE shares).
        self.__dict__["_perceptual_loss"] = LazyPerceptualLoss(vgg, owner="CViViT") if use_vgg_and_gan else None
        if exists(vgg) and not use_vgg_and_gan:
            logger.warning("CViViT: vgg was given but use_vgg_and_gan=False, so it is not used")

    # -- copies and weights (phenaki-pytorch 0.5 names) ----------------------------------------------------------

    def copy_for_eval(self) -> CViViT:
        """A frozen copy in eval mode (no gradients), e.g. the tokenizer inside `Phenaki`; it shares the perceptual
        network and keeps the discriminator, so it saves and loads like the original."""
        return copy.deepcopy(self).eval().requires_grad_(False)

    def load(self, path: str | Path, *, strict: bool = True) -> CViViT:
        """Loads weights into this model, in place: a `save_pretrained` folder, a `.safetensors` file, or a state
        dict saved with `torch.save` (read with `weights_only=True`: tensors only, no code runs). Returns self."""
        path = Path(path)
        if path.is_dir():
            path = path / WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"path: no CViViT weights at {path}")
        if path.suffix == ".safetensors":
            tensors, _ = load_checkpoint(path)
        else:
            tensors = load_torch_weights_only(path)
            if not isinstance(tensors, dict):
                raise ValueError(f"path: {path} does not hold a state dict (got {type(tensors).__name__})")
        load_state_dict_checked(self, tensors, strict=strict, source=str(path))
        return self

    # -- sizes ----------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The parameter dtype: inputs in another float dtype are cast to it."""
        return self._patch_embedding.weight.dtype

    @property
    def _patch_embedding(self) -> nn.Linear:
        return cast(nn.Linear, self.to_first_frame_tokens[2])  # cast: the Linear of the first-frame patch embedding

    def patch_grid(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
        """Tokens per frame along height and width for frames of `image_size` (default: the model's)."""
        size = _pair("image_size", image_size) if image_size is not None else self.image_size
        if not exists(size):
            raise ValueError("image_size: this CViViT was built without image_size, pass image_size=...")
        for name, value, patch in zip(("height", "width"), size, self.patch_size):
            if value % patch != 0:
                raise ValueError(f"image_size: the {name} {value} is not divisible by patch_size {patch}")
        return size[0] // self.patch_size[0], size[1] // self.patch_size[1]

    def num_token_frames(self, num_frames: int, include_first_frame: bool = True) -> int:
        """How many token frames `num_frames` video frames become (the first frame alone, then groups)."""
        tp = self.temporal_patch_size
        if include_first_frame:
            if num_frames < 1 or (num_frames - 1) % tp != 0:
                raise ValueError(
                    f"num_frames: expected 1 + k * temporal_patch_size ({tp}) frames when the first "
                    f"frame is included, got {num_frames}"
                )
            return 1 + (num_frames - 1) // tp
        if num_frames < 0 or num_frames % tp != 0:
            raise ValueError(
                f"num_frames: expected a multiple of temporal_patch_size ({tp}) when the first frame is "
                f"not included, got {num_frames}"
            )
        return num_frames // tp

    def num_frames_from_token_frames(self, num_token_frames: int) -> int:
        return 1 + (num_token_frames - 1) * self.temporal_patch_size

    # phenaki-pytorch 0.5 names of the sizes above (at the model's `image_size`)

    @property
    def patch_height_width(self) -> tuple[int, int]:
        """Tokens per frame along height and width at the model's `image_size` (= `patch_grid()`)."""
        return self.patch_grid()

    @property
    def image_num_tokens(self) -> int:
        """Tokens per token frame (one image) at the model's `image_size`."""
        height, width = self.patch_grid()
        return height * width

    def get_video_patch_shape(self, num_frames: int, include_first_frame: bool = True) -> tuple[int, int, int]:
        """The token grid `(token_frames, height, width)` of `num_frames` frames at the model's `image_size`."""
        return (self.num_token_frames(num_frames, include_first_frame), *self.patch_grid())

    def frames_per_num_tokens(self, num_tokens: int) -> int:
        """How many video frames `num_tokens` tokens decode to (the first token frame is one frame, every other
        `temporal_patch_size` frames), at the model's `image_size`."""
        check_positive_int("num_tokens", num_tokens)
        per_frame = self.image_num_tokens
        if num_tokens % per_frame != 0:
            raise ValueError(f"num_tokens: expected a multiple of the {per_frame} tokens of a frame, got {num_tokens}")
        return self.num_frames_from_token_frames(num_tokens // per_frame)

    def calculate_video_token_mask(self, videos: Tensor, video_frame_mask: Tensor) -> Tensor:
        """Which tokens of `videos (b, c, f, h, w)` are real, from which frames are: `video_frame_mask (b, f)` bool
        -> `(b, num_tokens)` bool, flat in (frame, row, column) order. Each row must be a run of real frames
        followed by padding, `1 + k * temporal_patch_size` real frames long (whole token frames)."""
        check_tensor("videos", videos, ndim=5, names=("batch", "channels", "frames", "height", "width"))
        batch, _, frames, height, width = videos.shape
        lengths = self._check_frame_mask(video_frame_mask, batch, frames, videos.device)
        grid_height, grid_width = self.patch_grid((height, width))
        token_frames = self.num_token_frames(frames)
        token_lengths = 1 + (lengths - 1) // self.temporal_patch_size
        token_frame_mask = torch.arange(token_frames, device=videos.device) < token_lengths[:, None]
        return repeat(token_frame_mask, "b t -> b (t hw)", hw=grid_height * grid_width)

    def _check_frame_mask(
        self, mask: Tensor, batch: int, frames: int, device: torch.device, name: str = "video_frame_mask"
    ) -> Tensor:
        """Validates a `(b, f)` bool frame mask (real frames first, then padding, whole token frames); returns
        the number of real frames per video `(b,)`."""
        check_tensor(name, mask, shape=(batch, frames), names=("batch", "frames"))
        if mask.dtype != torch.bool:
            raise TypeError(f"{name}: expected a bool tensor (True = real frame), got {mask.dtype}")
        check_device(name, mask, device)
        lengths = mask.sum(dim=-1)
        positions = torch.arange(frames, device=mask.device)
        if not torch.equal(mask, positions < lengths[:, None]):
            raise ValueError(
                f"{name}: expected each video's real frames first, then padding (the temporal "
                "attention is causal: padding at the end never changes the real frames' tokens)"
            )
        tp = self.temporal_patch_size
        bad = (lengths < 1) | ((lengths - 1) % tp != 0)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: expected 1 + k * temporal_patch_size ({tp}) real frames per video (whole "
                f"token frames), got {lengths.tolist()}"
            )
        return lengths

    def num_tokens_per_frames(
        self, num_frames: int, include_first_frame: bool = True, image_size: int | tuple[int, int] | None = None
    ) -> int:
        """Number of tokens `num_frames` frames become: `1 + k * temporal_patch_size` frames with the first frame,
        a multiple of `temporal_patch_size` without (a continuation)."""
        height, width = self.patch_grid(image_size)
        return self.num_token_frames(num_frames, include_first_frame) * height * width

    # -- input checks ---------------------------------------------------------------------------------------------

    def _check_video(self, video: Tensor, name: str = "video") -> Tensor:
        """Validate `(b, c, f, h, w)` (or an image `(b, c, h, w)`, a 1-frame video); returns the 5D video with pixels
        in [0, 1] in the model's dtype (`check_pixels`)."""
        check_tensor(name, video, ndim=(4, 5))
        video = check_pixels(name, video, device=self.device, dtype=self.dtype)
        if video.ndim == 4:
            video = rearrange(video, "b c h w -> b c 1 h w")
        _, channels, frames, height, width = video.shape
        if channels != self.channels:
            raise ValueError(
                f"{name}: expected {self.channels} channels (batch, channels, frames, height, width), "
                f"got shape {tuple(video.shape)}"
            )
        tp = self.temporal_patch_size
        if (frames - 1) % tp != 0:
            raise ValueError(
                f"{name}: expected 1 + k * temporal_patch_size ({tp}) frames (the first frame is "
                f"tokenized alone), got {frames} frames in shape {tuple(video.shape)}"
            )
        for axis, size, patch in (("height", height, self.patch_size[0]), ("width", width, self.patch_size[1])):
            if size % patch != 0:
                raise ValueError(
                    f"{name}: the {axis} {size} is not divisible by patch_size {patch} (shape {tuple(video.shape)})"
                )
        return video

    # -- encoder / decoder ----------------------------------------------------------------------------------------

    def _position_biases(self, frames: int, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The spatial `(heads, h*w, h*w)` and temporal `(heads, t, t)` attention biases of a token grid."""
        return (
            self.spatial_rel_pos_bias(height, width, device=device),
            self.temporal_rel_pos_bias(frames, device=device),
        )

    def _space_time_transform(
        self,
        tokens: Tensor,
        spatial: Transformer,
        temporal: Transformer,
        spatial_first: bool,
        biases: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Spatial attention within each frame and causal temporal attention per position, on `(b, t, h, w, d)`.
        `biases` (from `_position_biases`) lets the encoder and the decoder share one computation."""
        batch, frames, height, width, _ = tokens.shape
        if biases is None:
            biases = self._position_biases(frames, height, width, tokens.device)
        spatial_bias, temporal_bias = biases

        def space(x: Tensor) -> Tensor:
            x = rearrange(x, "b t h w d -> (b t) (h w) d")
            x = spatial(x, attn_bias=spatial_bias)
            return rearrange(x, "(b t) (h w) d -> b t h w d", b=batch, h=height)

        def time(x: Tensor) -> Tensor:
            x = rearrange(x, "b t h w d -> (b h w) t d")
            x = temporal(x, attn_bias=temporal_bias)
            return rearrange(x, "(b h w) t d -> b t h w d", b=batch, h=height, w=width)

        return time(space(tokens)) if spatial_first else space(time(tokens))

    def _video_to_tokens(self, video: Tensor) -> Tensor:
        """Patch embedding of a validated video in [-1, 1]: `(b, c, 1 + k * tp, h, w) -> (b, 1 + k, h', w', d)`."""
        first_frame, rest_frames = video[:, :, :1], video[:, :, 1:]
        first_tokens = self.to_first_frame_tokens(first_frame)
        if rest_frames.shape[2] == 0:
            return first_tokens
        rest_tokens = self.to_rest_frame_tokens(rest_frames)
        return torch.cat((first_tokens, rest_tokens), dim=1)

    def _transform_patch_tokens(self, tokens: Tensor, biases: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The encoder's transformers on patch embeddings `(b, t, h, w, d)` (before quantization)."""
        return self._space_time_transform(
            tokens, self.enc_spatial_transformer, self.enc_temporal_transformer, spatial_first=True, biases=biases
        )

    def _encode(
        self, video: Tensor, biases: tuple[Tensor, Tensor] | None = None, token_mask: Tensor | None = None
    ) -> EncodeOutput:
        """`token_mask (b, t*h*w)`: only these tokens are quantized (the codebook learns from them and the
        quantizer loss is their mean); the others keep their unquantized values and index -1."""
        tokens = self._transform_patch_tokens(self._video_to_tokens(video * 2 - 1), biases)
        _, frames, height, width, _ = tokens.shape
        flat = rearrange(tokens, "b t h w d -> b (t h w) d")
        if token_mask is None:
            quantized, indices, quantizer_loss = self.vq(flat)
        else:
            kept, kept_indices, quantizer_loss = self.vq(rearrange(flat[token_mask], "n d -> 1 n d"))
            quantized = flat.masked_scatter(rearrange(token_mask, "b n -> b n 1"), kept.to(flat.dtype))
            indices = torch.full(token_mask.shape, -1, dtype=kept_indices.dtype, device=flat.device)
            indices = indices.masked_scatter(token_mask, kept_indices)
        quantized = rearrange(quantized, "b (t h w) d -> b t h w d", t=frames, h=height, w=width)
        indices = rearrange(indices, "b (t h w) -> b t h w", t=frames, h=height, w=width)
        return EncodeOutput(quantized, indices, quantizer_loss)

    def _decode(self, tokens: Tensor, biases: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Quantized tokens `(b, t, h, w, d)` -> video in [-1, 1] (not clamped: the losses see the raw output)."""
        tokens = self._space_time_transform(
            tokens, self.dec_spatial_transformer, self.dec_temporal_transformer, spatial_first=False, biases=biases
        )
        first_frame = self.to_first_frame_pixels(tokens[:, :1])
        if tokens.shape[1] == 1:
            return first_frame
        rest_frames = self.to_rest_frame_pixels(tokens[:, 1:])
        return torch.cat((first_frame, rest_frames), dim=2)

    def encode(self, video: Tensor | None = None, *, tokens: Tensor | None = None) -> EncodeOutput | Tensor:
        """Tokenize a video `(b, c, 1 + k * tp, h, w)` (or an image `(b, c, h, w)`) with pixels in [0, 1].

        `tokens=` (phenaki-pytorch 0.5's argument): patch embeddings `(b, t, h', w', dim)` instead of a video; returns
        the encoder's output for them, `(b, t, h', w', dim)`, before quantization (as the published `encode`).
        """
        if exists(video) and not exists(tokens):
            return self._encode(self._check_video(video))
        if exists(video) or not exists(tokens):
            raise ValueError("video, tokens: pass exactly one (a video to tokenize, or patch embeddings to encode)")
        check_tensor(
            "tokens", tokens, ndim=5, dtype_floating=True, names=("batch", "token_frames", "height", "width", "dim")
        )
        if tokens.shape[-1] != self.dim:
            raise ValueError(
                f"tokens: expected the last dimension to be dim={self.dim}, got shape {tuple(tokens.shape)}"
            )
        return self._transform_patch_tokens(check_embeddings("tokens", tokens, device=self.device, dtype=self.dtype))

    def decode(self, tokens: Tensor) -> Tensor:
        """Quantized tokens `(b, t, h', w', dim)` -> video `(b, c, 1 + (t - 1) * tp, h, w)` in [0, 1]."""
        check_tensor(
            "tokens", tokens, ndim=5, dtype_floating=True, names=("batch", "token_frames", "height", "width", "dim")
        )
        if tokens.shape[-1] != self.dim:
            raise ValueError(
                f"tokens: expected the last dimension to be dim={self.dim}, got shape {tuple(tokens.shape)}"
            )
        tokens = check_embeddings("tokens", tokens, device=self.device, dtype=self.dtype)
        return ((self._decode(tokens) + 1) * 0.5).clamp(0.0, 1.0)

    def decode_from_codebook_indices(
        self, indices: Tensor, *, image_size: int | tuple[int, int] | None = None
    ) -> Tensor:
        """Codebook indices -> video in [0, 1].

        `indices` is `(b, t, h', w')` as returned by `encode` / `return_only_codebook_ids`, or a flat `(b, n)`
        sequence, whose frame size is `image_size` (default: the model's `image_size`).
        """
        check_tensor("indices", indices, ndim=(2, 4))
        if indices.dtype.is_floating_point:
            raise TypeError(f"indices: expected an integer tensor, got dtype {indices.dtype}")
        check_device("indices", indices, self.device)
        check_not_empty("indices", indices)
        check_tensor("indices", indices, value_range=(0, self.codebook_size - 1))
        if indices.ndim == 2:
            height, width = self.patch_grid(image_size)
            if indices.shape[1] % (height * width) != 0:
                raise ValueError(
                    f"indices: a flat sequence of {indices.shape[1]} tokens is not a whole number of "
                    f"frames of {height} x {width} tokens"
                )
            indices = rearrange(indices, "b (t h w) -> b t h w", h=height, w=width)
        codes = self.vq.get_codes_from_indices(indices.long())
        return ((self._decode(codes) + 1) * 0.5).clamp(0.0, 1.0)

    # -- losses ---------------------------------------------------------------------------------------------------

    @property
    def perceptual_loss(self) -> LazyPerceptualLoss | None:
        """The perceptual loss (None with `use_vgg_and_gan=False`); `.available` is False when training without it:
        the injected `vgg`, else the cached pretrained VGG16, else none (one warning)."""
        return self.__dict__["_perceptual_loss"]

    def _last_layer(self, num_frames: int) -> Tensor:
        """The weight the adaptive GAN weight is measured at: the projection that made most of the pixels."""
        projection = (self.to_rest_frame_pixels if num_frames > 1 else self.to_first_frame_pixels)[0]
        return cast(nn.Linear, projection).weight  # cast: the pixel projections start with their Linear

    def _reconstruct_for_discriminator(self, video: Tensor) -> Tensor:
        # the generator is not trained in this step: no graph, and no codebook (EMA) update from a second pass
        vq_training = self.vq.training
        self.vq.eval()
        try:
            with torch.no_grad():
                encoded = self._encode(video)
                return self._decode(encoded.tokens)
        finally:
            self.vq.train(vq_training)

    @staticmethod
    def _random_frames(video: Tensor, lengths: Tensor | None) -> Tensor:
        """One random frame index per video, among its first `lengths` (real) frames when given."""
        batch, frames = video.shape[0], video.shape[2]
        if lengths is None:
            return torch.randint(0, frames, (batch,), device=video.device)
        return (torch.rand(batch, device=video.device) * lengths).long().clamp(max=frames - 1)

    def discriminator_loss(
        self,
        video: Tensor,
        *,
        apply_grad_penalty: bool = True,
        discr: nn.Module | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """The discriminator's loss on one random frame per video: real frames vs. their reconstructions
        (made without gradients), hinge or BCE, plus the gradient penalty on the real frames when asked.

        `discr` overrides `self.discr` (a trainer passes its distributed wrapper of it); `mask (b, f)` bool: the
        frame is picked among the real frames only (see `forward`).
        """
        discr = discr if exists(discr) else self.discr
        if not self.use_vgg_and_gan or not exists(discr):  # self.discr exists exactly with use_vgg_and_gan
            raise ValueError("the discriminator loss needs a discriminator: build CViViT with use_vgg_and_gan=True")
        video = self._check_video(video)
        self._check_discriminator_size(video)
        lengths = (
            self._check_frame_mask(mask, video.shape[0], video.shape[2], video.device, "mask") if exists(mask) else None
        )
        recon = self._reconstruct_for_discriminator(video)

        frame_indices = self._random_frames(video, lengths)
        real = _frame_per_video(video * 2 - 1, frame_indices).detach()
        fake = _frame_per_video(recon, frame_indices).detach()
        if apply_grad_penalty:
            real.requires_grad_(True)
        real_logits = discr(real)
        fake_logits = discr(fake)
        loss = self.discr_loss_fn(fake_logits, real_logits)
        if apply_grad_penalty:
            loss = loss + gradient_penalty(real, real_logits, weight=self.grad_penalty_weight)
        return loss

    def forward(
        self,
        video: Tensor,
        mask: Tensor | None = None,
        *,
        return_recons: bool = False,
        return_recons_only: bool = False,
        return_discr_loss: bool = False,
        return_only_codebook_ids: bool = False,
        apply_grad_penalty: bool = True,
        return_loss_breakdown: bool = False,
    ):
        """Training loss for `video (b, c, 1 + k * temporal_patch_size, h, w)` (or an image `(b, c, h, w)`), [0, 1].

        - default: the generator loss (scalar); with `return_recons`, `(loss, recons)`; with
          `return_loss_breakdown`, also a `CViViTLosses` of its terms;
        - `return_recons_only`: the reconstruction in [0, 1];
        - `return_only_codebook_ids`: the codebook indices `(b, 1 + k, h', w')`;
        - `return_discr_loss`: the discriminator loss (`apply_grad_penalty` adds the R1 gradient penalty).

        `mask (b, f)` bool (variable-length videos in one batch, padded at the end): the losses count the real
        frames only: the reconstruction error is their mean, only their tokens are quantized (codebook updates and
        quantizer loss), and the perceptual / GAN frame is one of them. Each video's real frames come first,
        `1 + k * temporal_patch_size` of them; the causal temporal attention keeps the padding from changing them.
        """
        video = self._check_video(video)
        lengths = None
        if exists(mask):
            if return_only_codebook_ids or return_recons_only:
                raise ValueError(
                    "mask: only for the training losses; to tokenize or reconstruct a shorter video, "
                    "pass its real frames (video[:, :, :num_real_frames])"
                )
            lengths = self._check_frame_mask(mask, video.shape[0], video.shape[2], video.device, "mask")

        if return_only_codebook_ids:
            return self._encode(video).indices

        if return_discr_loss:
            return self.discriminator_loss(video, apply_grad_penalty=apply_grad_penalty, mask=mask)

        if self.use_vgg_and_gan and not return_recons_only:
            self._check_discriminator_size(video)
        frames = self.num_token_frames(video.shape[2])
        grid_height, grid_width = (size // patch for size, patch in zip(video.shape[-2:], self.patch_size))
        biases = self._position_biases(frames, grid_height, grid_width, video.device)
        token_mask = self.calculate_video_token_mask(video, mask) if exists(mask) else None
        encoded = self._encode(video, biases, token_mask=token_mask)
        recon = self._decode(encoded.tokens, biases)

        if return_recons_only:
            return ((recon + 1) * 0.5).clamp(0.0, 1.0)

        target = video * 2 - 1
        if exists(mask):
            pixel_mask = repeat(mask, "b f -> b c f h w", c=video.shape[1], h=video.shape[3], w=video.shape[4])
            recon_loss = F.mse_loss(recon[pixel_mask], target[pixel_mask])
        else:
            recon_loss = F.mse_loss(recon, target)
        zero = recon_loss.new_zeros(())
        perceptual_loss, gen_loss, adaptive_weight = zero, zero, zero

        perceptual_loss_fn, discr = self.perceptual_loss, self.discr
        # both exist exactly with use_vgg_and_gan (the checks narrow their Optional types)
        if self.use_vgg_and_gan and exists(perceptual_loss_fn) and exists(discr):
            frame_indices = self._random_frames(video, lengths)
            real_frames = _frame_per_video(target, frame_indices)
            recon_frames = _frame_per_video(recon, frame_indices)

            if self.perceptual_loss_weight > 0:
                distance = perceptual_loss_fn(recon_frames, real_frames)
                perceptual_loss = distance if exists(distance) else zero

            gen_loss = self.gen_loss_fn(discr(recon_frames))
            nll_loss = recon_loss + self.perceptual_loss_weight * perceptual_loss
            if torch.is_grad_enabled() and recon.requires_grad:
                adaptive_weight = adaptive_generator_weight(nll_loss, gen_loss, self._last_layer(video.shape[2]))
            else:
                adaptive_weight = torch.ones_like(zero)  # evaluation: report the loss with a neutral weight

        loss = (
            recon_loss
            + encoded.quantizer_loss
            + self.perceptual_loss_weight * perceptual_loss
            + self.gan_loss_weight * adaptive_weight * gen_loss
        )

        outputs: list[Tensor | CViViTLosses] = [loss]
        if return_recons:
            outputs.append(((recon.detach() + 1) * 0.5).clamp(0.0, 1.0))
        if return_loss_breakdown:
            outputs.append(
                CViViTLosses(
                    recon_loss.detach(),
                    encoded.quantizer_loss.detach(),
                    perceptual_loss.detach(),
                    gen_loss.detach(),
                    adaptive_weight.detach(),
                )
            )
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _check_discriminator_size(self, video: Tensor) -> None:
        factor = self.discr_downsample_factor
        height, width = video.shape[-2:]
        if height % factor != 0 or width % factor != 0:
            raise ValueError(
                f"video: the discriminator ({factor}x downsampling) needs a height and width divisible "
                f"by {factor}, got {height} x {width}; lower discr_layers or use_vgg_and_gan=False"
            )


def _pair(name: str, value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or a (height, width) pair, got {value!r}")
        pair = (value[0], value[1])
    else:
        pair = (value, value)
    for v in pair:
        check_positive_int(name, v)
    return pair
