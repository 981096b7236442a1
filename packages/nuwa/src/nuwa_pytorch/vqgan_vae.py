"""VQGAN-VAE: the image tokenizer of NUWA (Esser et al. 2021), trained with reconstruction, perceptual,
quantizer and adversarial losses, applied to videos frame by frame.

    vae = VQGanVAE(dim=64, image_size=128, num_layers=3)
    loss = vae(images, return_loss=True)              # autoencoder step (images in [0, 1])
    discr_loss = vae(images, return_discr_loss=True)   # discriminator step
    indices = vae.get_video_indices(video)             # (b, f, c, h, w) -> (b, f * fmap * fmap) tokens
    video = vae.codebook_indices_to_video(indices)     # back to (b, f, c, h, w) in [0, 1]

A resnet encoder halves the resolution `num_layers` times (feature maps of `image_size // 2 ** num_layers`), the
core `VectorQuantize` turns each feature vector into a code (optionally in a lower `vq_codebook_dim`, cosine,
k-means initialised, orthogonally regularised) and a mirrored decoder maps codes back to pixels. Images and videos
are floats in [0, 1] at the public boundary and [-1, 1] inside. Inputs are read by the rule every package shares
(`synthesis_core.checks.check_pixels`: [-1, 1] batches with a warning when clamped, uint8 divided by 255, other
float dtypes cast to the model's; NaN / inf, 0-255 floats, another device or an empty batch refused), so a bad
batch never reaches the codebook.

The perceptual loss runs over `vgg`: any injected module returning feature maps, else torchvision's pretrained
VGG16 from the local torch cache, resolved on first use (`synthesis_core.gan.LazyPerceptualLoss`), so building a
model never needs it; without those weights the model trains without the perceptual term after one warning.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from synthesis_core.attention import Attention
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_device,
    check_embeddings,
    check_in_range,
    check_not_empty,
    check_pixels,
    check_positive_int,
    check_tensor,
)
from synthesis_core.chunked import apply_in_slices
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
from synthesis_core.layers import Downsample, ResnetBlock, Upsample
from synthesis_core.protocol import resolve_alias
from synthesis_core.quantize import VectorQuantize
from synthesis_core.utils import default, exists, frozen

logger = logging.getLogger(__name__)

__all__ = ["VQGanVAE"]


class SpatialAttention(nn.Module):
    """Residual full self-attention over the positions of a feature map `(b, c, h, w)` (pre-norm)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        self.attn = Attention(dim, dim_head=dim_head, heads=heads, pre_norm=True, dropout=dropout)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[-2]
        tokens = rearrange(x, "b c h w -> b (h w) c")
        return x + rearrange(self.attn(tokens), "b (h w) c -> b c h w", h=height)


def _resolve_use_attn(use_attn: bool | Sequence[bool], num_layers: int) -> tuple[bool, ...]:
    if isinstance(use_attn, bool):
        # full attention costs (h * w)^2: by default only on the smallest feature map
        return tuple(use_attn and i == num_layers - 1 for i in range(num_layers))
    use_attn = tuple(bool(flag) for flag in use_attn)
    if len(use_attn) != num_layers:
        raise ValueError(f"use_attn: expected a bool or {num_layers} flags (one per layer), got {len(use_attn)}")
    return use_attn


class VQGanVAE(PretrainedMixin, nn.Module):
    """Vector-quantised GAN autoencoder for images (and videos, frame by frame).

    Args:
        dim: channels after the first convolution; layer `i` has `dim * layer_mults[i]` channels.
        image_size: height and width of the images (a multiple of `2 ** num_layers`).
        num_layers: halvings of the resolution; the token grid is `image_size // 2 ** num_layers` squared.
        channels: image channels.
        layer_mults: channel multipliers per layer (default `1, 2, 4, ...`).
        num_resnet_blocks: resnet blocks per layer.
        vq_codebook_size, vq_codebook_dim (lower-dimensional codes with in/out projections), vq_decay,
        vq_commitment_weight, vq_kmeans_init, vq_use_cosine_sim, vq_orthogonal_reg_weight,
        vq_orthogonal_reg_max_codes, vq_threshold_ema_dead_code: the core `VectorQuantize` options.
        vq_ema_update: EMA codebook updates; default: yes, unless `vq_orthogonal_reg_weight > 0` (the orthogonal
            regulariser needs a codebook learned by gradients).
        use_attn: attention per layer (a bool per layer); `True` puts it on the smallest feature map only.
        attn_heads, attn_dim_head, resnet_groups, first_conv_kernel_size: architecture details.
        attn_dropout: dropout of the attention weights (training only).
        use_hinge_loss: hinge GAN losses (else non-saturating BCE).
        l2_recon_loss: mean squared reconstruction error (else L1).
        vgg: the perceptual loss network (any module returning feature maps; see `synthesis_core.gan.PerceptualLoss`);
            default: pretrained VGG16 from the local torch cache, looked up at the first loss; when it is not
            there, training goes on without the perceptual term after one warning saying how to enable it.
        use_vgg_and_gan: perceptual and adversarial losses (False: reconstruction + quantizer losses only).
        discr_dim, discr_layers: the discriminator's base channels and number of layers.
        perceptual_loss_weight, grad_penalty_weight: loss weights (the GAN weight is adaptive).
    """

    def __init__(
        self,
        dim: int,
        image_size: int,
        num_layers: int = 4,
        channels: int = 3,
        layer_mults: Sequence[int] | None = None,
        num_resnet_blocks: int = 1,
        vq_codebook_size: int = 512,
        vq_codebook_dim: int | None = None,
        vq_decay: float = 0.8,
        vq_commitment_weight: float = 1.0,
        vq_kmeans_init: bool = True,
        vq_use_cosine_sim: bool = True,
        vq_orthogonal_reg_weight: float = 0.0,
        vq_orthogonal_reg_max_codes: int | None = None,
        vq_threshold_ema_dead_code: float = 0.0,
        vq_ema_update: bool | None = None,
        use_attn: bool | Sequence[bool] = True,
        attn_heads: int = 8,
        attn_dim_head: int = 64,
        attn_dropout: float = 0.0,
        resnet_groups: int = 16,
        first_conv_kernel_size: int = 5,
        use_hinge_loss: bool = True,
        l2_recon_loss: bool = False,
        vgg: nn.Module | None = None,
        use_vgg_and_gan: bool = True,
        discr_dim: int | None = None,
        discr_layers: int = 4,
        perceptual_loss_weight: float = 1.0,
        grad_penalty_weight: float = 10.0,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("image_size", image_size)
        check_positive_int("num_layers", num_layers)
        check_positive_int("channels", channels)
        check_positive_int("num_resnet_blocks", num_resnet_blocks, allow_zero=True)
        check_positive_int("first_conv_kernel_size", first_conv_kernel_size)
        check_positive_int("discr_layers", discr_layers)
        check_in_range("perceptual_loss_weight", perceptual_loss_weight, 0.0, None)
        check_in_range("grad_penalty_weight", grad_penalty_weight, 0.0, None)
        check_in_range("attn_dropout", attn_dropout, 0.0, 1.0)
        if first_conv_kernel_size % 2 == 0:
            raise ValueError(
                f"first_conv_kernel_size: expected an odd size (keeps the image size), got {first_conv_kernel_size}"
            )
        if image_size % 2**num_layers != 0:
            raise ValueError(
                f"image_size: expected a multiple of 2 ** num_layers = {2**num_layers} "
                f"(num_layers={num_layers}), got {image_size}"
            )
        if use_vgg_and_gan and channels not in (1, 3):
            raise ValueError(
                f"channels: the perceptual loss takes 1 (grey) or 3 (RGB) channels, got {channels}; "
                "build with use_vgg_and_gan=False for other images (e.g. segmentation maps)"
            )
        layer_mults = tuple(default(layer_mults, lambda: tuple(2**i for i in range(num_layers))))
        if len(layer_mults) != num_layers:
            raise ValueError(f"layer_mults: expected {num_layers} multipliers (one per layer), got {layer_mults}")
        for i, mult in enumerate(layer_mults):
            check_positive_int(f"layer_mults[{i}]", mult)

        self.image_size = image_size
        self.channels = channels
        self.num_layers = num_layers
        self.fmap_size = image_size // 2**num_layers
        self.use_vgg_and_gan = use_vgg_and_gan
        self.l2_recon_loss = l2_recon_loss
        self.perceptual_loss_weight = perceptual_loss_weight
        self.grad_penalty_weight = grad_penalty_weight

        dims = (dim, *(dim * mult for mult in layer_mults))
        use_attn = _resolve_use_attn(use_attn, num_layers)

        def groups_for(channels_: int) -> int:
            return math.gcd(resnet_groups, channels_)

        # encoder: conv in, then per layer: downsample, resnet blocks, optional attention
        self.encoder_in = nn.Conv2d(channels, dim, first_conv_kernel_size, padding=first_conv_kernel_size // 2)
        self.encoder_layers = nn.ModuleList([])
        for (dim_in, dim_out), with_attn in zip(zip(dims[:-1], dims[1:]), use_attn):
            blocks: list[nn.Module] = [Downsample(dim_in, dim_out)]
            blocks += [ResnetBlock(dim_out, dim_out, groups=groups_for(dim_out)) for _ in range(num_resnet_blocks)]
            if with_attn:
                blocks.append(SpatialAttention(dim_out, heads=attn_heads, dim_head=attn_dim_head, dropout=attn_dropout))
            self.encoder_layers.append(nn.Sequential(*blocks))

        # quantizer
        self.codebook_dim = dims[-1]
        ema_update = default(vq_ema_update, vq_orthogonal_reg_weight == 0)
        self.vq = VectorQuantize(
            dim=dims[-1],
            codebook_size=vq_codebook_size,
            codebook_dim=vq_codebook_dim,
            decay=vq_decay,
            commitment_weight=vq_commitment_weight,
            kmeans_init=vq_kmeans_init,
            use_cosine_sim=vq_use_cosine_sim,
            orthogonal_reg_weight=vq_orthogonal_reg_weight,
            orthogonal_reg_max_codes=vq_orthogonal_reg_max_codes,
            threshold_ema_dead_code=vq_threshold_ema_dead_code,
            ema_update=ema_update,
        )
        self.codebook_size = self.vq.codebook_size

        # decoder: the mirror image, per layer: attention, resnet blocks, upsample
        self.decoder_layers = nn.ModuleList([])
        for (dim_in, dim_out), with_attn in reversed(list(zip(zip(dims[:-1], dims[1:]), use_attn))):
            blocks = (
                [SpatialAttention(dim_out, heads=attn_heads, dim_head=attn_dim_head, dropout=attn_dropout)]
                if with_attn
                else []
            )
            blocks += [ResnetBlock(dim_out, dim_out, groups=groups_for(dim_out)) for _ in range(num_resnet_blocks)]
            blocks.append(Upsample(dim_out, dim_in))
            self.decoder_layers.append(nn.Sequential(*blocks))
        self.decoder_out = nn.Sequential(nn.GroupNorm(groups_for(dim), dim), nn.SiLU(), nn.Conv2d(dim, channels, 1))

        # GAN and perceptual losses
        self.discr: nn.Module | None = None
        if use_vgg_and_gan:
            discr_factor = 2 ** (discr_layers - 1)
            if image_size % discr_factor != 0:
                raise ValueError(
                    f"image_size: the discriminator with discr_layers={discr_layers} needs a multiple of "
                    f"{discr_factor}, got {image_size}; lower discr_layers or use_vgg_and_gan=False"
                )
            self.discr = Discriminator(dim=default(discr_dim, dim), channels=channels, num_layers=discr_layers)
        self.discr_loss_fn = hinge_discr_loss if use_hinge_loss else bce_discr_loss
        self.gen_loss_fn = hinge_gen_loss if use_hinge_loss else bce_gen_loss
        # The perceptual network is frozen and usually pretrained: a plain attribute (not in the state dict, not
        # moved by .to()), resolved on first use so that construction never needs its weights.
        self.__dict__["_perceptual_loss"] = LazyPerceptualLoss(vgg, owner="VQGanVAE") if use_vgg_and_gan else None
        if exists(vgg) and not use_vgg_and_gan:
            logger.warning("VQGanVAE: vgg was given but use_vgg_and_gan=False, so it is not used")

    def copy_for_eval(self) -> VQGanVAE:
        """A frozen copy in eval mode (no gradients), e.g. to tokenize data beside the model being trained; it shares
        the perceptual network and keeps the discriminator, so it saves and loads like the original."""
        return copy.deepcopy(self).eval().requires_grad_(False)

    # sizes and input checks

    @property
    def num_tokens_per_frame(self) -> int:
        return self.fmap_size**2

    @property
    def codebook(self) -> Tensor:
        """The code of every codebook index as a feature-map vector, `(codebook_size, codebook_dim)`:
        `vae.codebook[indices]` (laid out `(b, d, h, w)`) decodes with `decode(..., quantize=False)`. Computed from
        the quantizer (through its out projection when `vq_codebook_dim` is set), so it follows training."""
        indices = torch.arange(self.codebook_size, device=self.vq.codebook.device)
        return self.vq.get_codes_from_indices(indices)

    @property
    def device(self) -> torch.device:
        return self.last_layer.device

    @property
    def dtype(self) -> torch.dtype:
        """The parameter dtype: inputs in another float dtype are cast to it."""
        return self.last_layer.dtype

    def _check_pixels(self, name: str, x: Tensor) -> Tensor:
        """Images `(b, c, h, w)` or videos `(b, f, c, h, w)` at the API -> pixels in [0, 1] in the model's dtype
        (`check_pixels`)."""
        check_tensor(name, x, ndim=(4, 5))
        size, channels = self.image_size, self.channels
        if x.ndim == 4:
            check_tensor(name, x, shape=("batch", channels, size, size), names=("batch", "channels", "height", "width"))
        else:
            check_tensor(
                name,
                x,
                shape=("batch", "frames", channels, size, size),
                names=("batch", "frames", "channels", "height", "width"),
            )
        return check_pixels(name, x, device=self.device, dtype=self.dtype)

    # encoding and decoding (internal scale [-1, 1], images (b, c, h, w))

    def _encode(self, x: Tensor) -> Tensor:
        x = self.encoder_in(x)
        for layer in self.encoder_layers:
            x = layer(x)
        return x

    def _quantize(self, fmap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        height = fmap.shape[-2]
        quantized, indices, loss = self.vq(rearrange(fmap, "b c h w -> b (h w) c"))
        return rearrange(quantized, "b (h w) c -> b c h w", h=height), indices, loss

    def _decode(self, fmap: Tensor) -> Tensor:
        for layer in self.decoder_layers:
            fmap = layer(fmap)
        return self.decoder_out(fmap)

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight, where the adaptive GAN weight balances the losses."""
        return cast(Tensor, self.decoder_out[-1].weight)  # cast: the Sequential's last layer is a Conv2d

    def _reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        quantized, indices, vq_loss = self._quantize(self._encode(x))
        return self._decode(quantized), indices, vq_loss

    # public encoding API (pixels in [0, 1]; images (b, c, h, w) or videos (b, f, c, h, w))

    def encode(self, x: Tensor | None = None, *, fmap: Tensor | None = None) -> Tensor:
        """Continuous (pre-quantization) feature maps: `(b, d, fmap, fmap)`, or `(b, f, d, fmap, fmap)` for videos.

        `fmap` is nuwa-pytorch 0.7.8's name of the input images (it returned the quantized maps, indices and loss
        instead: `get_codebook_indices` gives the indices, `decode` quantizes)."""
        x = resolve_alias("x", x, "fmap", fmap)
        if x is None:
            raise TypeError("encode: missing the images x (b, c, h, w) or videos (b, f, c, h, w)")
        x = self._check_pixels("x", x)
        if x.ndim == 5:
            frames = x.shape[1]
            fmap = self._encode(rearrange(x, "b f c h w -> (b f) c h w") * 2 - 1)
            return rearrange(fmap, "(b f) d h w -> b f d h w", f=frames)
        return self._encode(x * 2 - 1)

    def decode(self, fmap: Tensor, quantize: bool = True) -> Tensor:
        """Pixels in [0, 1] from feature maps `(b, d, fmap, fmap)` or `(b, f, d, fmap, fmap)` (as `encode` returns),
        quantized first unless `quantize=False` (for maps that are codes already)."""
        check_tensor("fmap", fmap, ndim=(4, 5), dtype_floating=True)
        is_video = fmap.ndim == 5
        if is_video:
            frames = fmap.shape[1]
            fmap = rearrange(fmap, "b f d h w -> (b f) d h w")
        check_tensor(
            "fmap",
            fmap,
            shape=("batch", self.codebook_dim, self.fmap_size, self.fmap_size),
            names=("batch", "dim", "height", "width"),
        )
        fmap = check_embeddings("fmap", fmap, device=self.device, dtype=self.dtype)
        if quantize:
            fmap, _, _ = self._quantize(fmap)
        images = ((self._decode(fmap) + 1) * 0.5).clamp(0.0, 1.0)
        return rearrange(images, "(b f) c h w -> b f c h w", f=frames) if is_video else images

    @torch.no_grad()
    def get_video_indices(self, video: Tensor) -> Tensor:
        """Codebook indices of a video `(b, f, c, h, w)` -> `(b, f * fmap * fmap)` (frame, row, column order), or of
        images `(b, c, h, w)` -> `(b, fmap * fmap)`."""
        video = self._check_pixels("video", video)
        is_video = video.ndim == 5
        images = rearrange(video, "b f c h w -> (b f) c h w") if is_video else video
        _, indices, _ = self._quantize(self._encode(images * 2 - 1))
        if is_video:
            return rearrange(indices, "(b f) n -> b (f n)", b=video.shape[0])
        return indices

    def get_codebook_indices(self, images: Tensor) -> Tensor:
        """Codebook indices of images `(b, c, h, w)` -> `(b, fmap * fmap)`."""
        check_tensor("images", images, ndim=4, names=("batch", "channels", "height", "width"))
        return self.get_video_indices(images)

    def codebook_indices_to_video(self, indices: Tensor, frames_per_batch: int | None = None) -> Tensor:
        """Pixels in [0, 1] from codebook indices: `(b, f * fmap * fmap)` or `(b, f, fmap, fmap)` -> `(b, f, c, h, w)`.

        The codes go through the quantizer's out projection (`get_codes_from_indices`); frames are decoded
        `frames_per_batch` at a time (all at once by default) to cap the memory of long videos.
        """
        check_tensor("indices", indices, ndim=(2, 4))
        if indices.is_floating_point():
            raise TypeError(f"indices: expected an integer tensor of codebook indices, got {indices.dtype}")
        per_frame = self.num_tokens_per_frame
        if indices.ndim == 4:
            check_tensor(
                "indices",
                indices,
                shape=("batch", "frames", self.fmap_size, self.fmap_size),
                names=("batch", "frames", "height", "width"),
            )
            indices = rearrange(indices, "b f h w -> b (f h w)")
        if indices.shape[1] % per_frame != 0:
            raise ValueError(
                f"indices: expected a whole number of frames of {self.fmap_size} x {self.fmap_size} = "
                f"{per_frame} tokens, got {indices.shape[1]} tokens"
            )
        check_device("indices", indices, self.device)
        check_not_empty("indices", indices)
        check_tensor("indices", indices, value_range=(0, self.codebook_size - 1))
        batch = indices.shape[0]
        frame_indices = rearrange(indices, "b (f n) -> (b f) n", n=per_frame)

        def decode_frames(frame_indices: Tensor) -> Tensor:
            codes = self.vq.get_codes_from_indices(frame_indices)
            fmap = rearrange(codes, "b (h w) d -> b d h w", h=self.fmap_size)
            return self._decode(fmap.to(self.last_layer.dtype))

        images = apply_in_slices(decode_frames, frame_indices, frames_per_batch)
        images = ((images + 1) * 0.5).clamp(0.0, 1.0)
        return rearrange(images, "(b f) c h w -> b f c h w", b=batch)

    # losses

    @property
    def perceptual_loss(self) -> LazyPerceptualLoss | None:
        """The perceptual loss (None with `use_vgg_and_gan=False`); `.available` is False when training without it."""
        return self.__dict__["_perceptual_loss"]

    def _recon_loss(self, recon: Tensor, target: Tensor) -> Tensor:
        recon, target = recon.float(), target.float()
        return F.mse_loss(recon, target) if self.l2_recon_loss else F.l1_loss(recon, target)

    def discriminator_loss(
        self, images: Tensor, apply_grad_penalty: bool = True, discr: nn.Module | None = None
    ) -> Tensor:
        """The discriminator's loss: real images against their reconstructions (made without gradients and without
        codebook updates), plus the gradient penalty on the real images when asked. `discr` overrides
        `self.discr` (a trainer passes its distributed wrapper of it)."""
        discr = discr if exists(discr) else self.discr
        if not self.use_vgg_and_gan or not exists(discr):  # self.discr exists exactly with use_vgg_and_gan
            raise ValueError("return_discr_loss: this VQGanVAE has no discriminator (use_vgg_and_gan=False)")
        images = self._check_pixels("img", images)
        if images.ndim == 5:
            images = rearrange(images, "b f c h w -> (b f) c h w")
        real = images * 2 - 1
        vq_training = self.vq.training
        self.vq.eval()  # a second pass over the same batch must not move the EMA codebook again
        try:
            with torch.no_grad():
                fake, _, _ = self._reconstruct(real)
        finally:
            self.vq.train(vq_training)
        real = real.detach().requires_grad_(apply_grad_penalty)
        real_logits = discr(real)
        fake_logits = discr(fake.detach())
        loss = self.discr_loss_fn(fake_logits.float(), real_logits.float())
        if apply_grad_penalty:
            loss = loss + gradient_penalty(real, real_logits, weight=self.grad_penalty_weight)
        return loss

    def forward(
        self,
        img: Tensor,
        return_loss: bool = False,
        return_discr_loss: bool = False,
        return_recons: bool = False,
        apply_grad_penalty: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Images `(b, c, h, w)` (or videos `(b, f, c, h, w)`, frame by frame) in [0, 1].

        - default: the reconstruction in [0, 1];
        - `return_loss`: the autoencoder loss: reconstruction (L1 or L2) + quantizer, and with `use_vgg_and_gan`
          perceptual + adaptively weighted generator loss (the discriminator gets no gradients from it);
        - `return_discr_loss`: the discriminator loss (`apply_grad_penalty` adds the gradient penalty);
        - `return_recons` with a loss: `(loss, reconstruction)`.
        """
        if return_loss and return_discr_loss:
            raise ValueError(
                "return_loss and return_discr_loss: ask for one loss at a time (they train different "
                "parameters in alternating steps)"
            )
        img = self._check_pixels("img", img)
        is_video = img.ndim == 5
        images = rearrange(img, "b f c h w -> (b f) c h w") if is_video else img

        def to_public(recon: Tensor) -> Tensor:
            recon = ((recon + 1) * 0.5).clamp(0.0, 1.0)
            return rearrange(recon, "(b f) c h w -> b f c h w", b=img.shape[0]) if is_video else recon

        if return_discr_loss:
            loss = self.discriminator_loss(images, apply_grad_penalty=apply_grad_penalty)
            return (loss, to_public(self._reconstruct(images * 2 - 1)[0].detach())) if return_recons else loss

        target = images * 2 - 1
        recon, _, vq_loss = self._reconstruct(target)
        if not return_loss:
            return to_public(recon)

        recon_loss = self._recon_loss(recon, target)
        perceptual_loss_fn, discr = self.perceptual_loss, self.discr
        # both exist exactly with use_vgg_and_gan (the checks narrow their Optional types)
        if not self.use_vgg_and_gan or not exists(perceptual_loss_fn) or not exists(discr):
            loss = recon_loss + vq_loss
        else:
            perceptual_loss = perceptual_loss_fn(recon, target)
            if perceptual_loss is None:  # no VGG weights here: warned once, trains without the term
                perceptual_loss = recon_loss.new_zeros(())
            nll_loss = recon_loss + self.perceptual_loss_weight * perceptual_loss
            with frozen(discr):
                gen_loss = self.gen_loss_fn(discr(recon).float())
            if torch.is_grad_enabled() and recon.requires_grad:
                adaptive_weight = adaptive_generator_weight(nll_loss, gen_loss, self.last_layer)
            else:
                adaptive_weight = torch.ones((), device=recon.device)  # evaluation: a neutral weight
            loss = nll_loss + vq_loss + adaptive_weight * gen_loss
        return (loss, to_public(recon.detach())) if return_recons else loss
