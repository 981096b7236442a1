"""What `Imagen` and `ElucidatedImagen` share: the cascade of U-Nets and everything around the diffusion itself.

A cascade is a list of U-Nets, each generating at its own resolution (and, for video, its own frame count) and,
after the first, conditioned on the previous stage's output. This module holds the parts that do not depend on
the diffusion formulation:

- holding and casting the U-Nets (`nn.ModuleList`, so `parameters()` lists every one of them),
- text conditioning (raw texts through a `TextEncoder` owned by the cascade, or precomputed embeddings),
- input checks with clear errors (pixels by the rule every package shares, `synthesis_core.checks.check_pixels`),
  resizing in space and time, random crops,
- the low-resolution conditioning with noise augmentation, one function for training and sampling alike
  (normalise to [-1, 1] first, then resize, then noise),
- the stage-by-stage sampling loop (start/stop stages, inpainting, init images, per-stage guidance scale).

Subclasses supply the formulation through two methods: `stage_loss` (training one stage) and `sample_stage`
(sampling one stage).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast, overload

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from imagen_pytorch.unet import RESIZE_MODES, NullUnet, Unet
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_batch_match,
    check_choice,
    check_embeddings,
    check_guidance_scale,
    check_in_range,
    check_pixels,
    check_positive_int,
    check_steps,
    check_tensor,
)
from synthesis_core.diffusion import (
    LOSS_TYPES,
    ContinuousSchedule,
    dynamic_threshold,
    per_sample_loss,
    right_pad_dims_to,
    static_threshold,
)
from synthesis_core.protocol import resolve_alias, resolve_text
from synthesis_core.text import DEFAULT_T5_NAME, TextEncoder
from synthesis_core.utils import default, exists

logger = logging.getLogger(__name__)

__all__ = [
    "CascadeBase",
    "StageSampling",
    "per_unet",
    "resize_image_to",
    "resize_video_frames",
    "is_null_unet",
    "DEFAULT_T5_NAME",
]


# ---------------------------------------------------------------------------------------------------------------
# small helpers


def is_null_unet(unet: nn.Module) -> bool:
    return isinstance(unet, NullUnet)


def per_unet(name: str, value: Any, num_unets: int) -> tuple:
    """One value per U-Net: a list/tuple must have exactly `num_unets` entries, anything else is repeated."""
    if isinstance(value, list | tuple):
        if len(value) != num_unets:
            raise ValueError(f"{name}: expected one value per unet ({num_unets}), got {len(value)}: {tuple(value)}")
        return tuple(value)
    return (value,) * num_unets


def normalize_neg_one_to_one(x: Tensor) -> Tensor:
    return x * 2 - 1


def unnormalize_zero_to_one(x: Tensor) -> Tensor:
    return (x + 1) * 0.5


def resize_image_to(x: Tensor, size: int, mode: str = "nearest") -> Tensor:
    """Resize the last two dims of images (b, c, h, w) or videos (b, c, t, h, w) to `size` x `size`.

    Shrinking is always antialiased bilinear (nearest would alias); enlarging uses `mode`.
    """
    if x.shape[-2:] == (size, size):
        return x
    is_video = x.ndim == 5
    if is_video:
        frames = x.shape[2]
        x = rearrange(x, "b c t h w -> (b t) c h w")
    dtype = x.dtype
    x = x.float()  # interpolation kernels for bf16 are missing on some backends
    if size < min(x.shape[-2:]):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    else:
        align = {} if mode == "nearest" else {"align_corners": False}
        x = F.interpolate(x, size=(size, size), mode=mode, **align)
    x = x.to(dtype)
    if is_video:
        x = rearrange(x, "(b t) c h w -> b c t h w", t=frames)
    return x


def resize_video_frames(video: Tensor, frames: int) -> Tensor:
    """Resample a video (b, c, t, h, w) to `frames` frames by nearest neighbour in time (repeats or drops frames)."""
    if video.shape[2] == frames:
        return video
    return F.interpolate(video, size=(frames, *video.shape[-2:]), mode="nearest")


def random_crop(tensors: Sequence[Tensor | None], size: int) -> list[Tensor | None]:
    """Crop the same random `size` x `size` window (one per sample) from every tensor of the list."""
    reference = next(t for t in tensors if exists(t))
    batch, height, width = reference.shape[0], *reference.shape[-2:]
    tops = torch.randint(0, height - size + 1, (batch,)).tolist()
    lefts = torch.randint(0, width - size + 1, (batch,)).tolist()

    def crop(t: Tensor) -> Tensor:
        return torch.stack([t[i, ..., y : y + size, x : x + size] for i, (y, x) in enumerate(zip(tops, lefts))])

    return [crop(t) if exists(t) else None for t in tensors]


@dataclass
class StageSampling:
    """What the cascade's sampling loop hands a formulation's `sample_stage` for one stage: the U-Net keywords
    (text, low-resolution conditioning, video frames), the guidance scale, inpainting, init images and the sampler
    settings of the call."""

    unet_kwargs: dict
    cond_scale: float
    inpaint: tuple[Tensor, Tensor] | None
    inpaint_resample_times: int
    init_images: Tensor | None
    skip_steps: int | None
    sampler: str | None
    steps: int | None
    use_tqdm: bool
    device: torch.device
    generator: torch.Generator | None = None

    @property
    def resample_times(self) -> int:
        """RePaint resampling rounds per step: `inpaint_resample_times` when inpainting, else 1."""
        return self.inpaint_resample_times if exists(self.inpaint) else 1

    def first_step(self, steps: int, index: int) -> int:
        """The sampling step to start at: `skip_steps` (checked against `steps`) when starting from init images,
        else 0."""
        if not exists(self.init_images):
            return 0
        skip = default(self.skip_steps, 0)
        if not 0 <= skip < steps:
            raise ValueError(f"skip_steps: expected an int in [0, {steps}) for unet {index + 1}, got {skip}")
        return skip


# ---------------------------------------------------------------------------------------------------------------
# the cascade


class CascadeBase(PretrainedMixin, nn.Module):
    """The parts of a cascading diffusion model that do not depend on the formulation (see the module docstring).

    Its constructor is the one place the arguments every cascade takes are written: `Imagen` and
    `ElucidatedImagen` add their formulation's arguments and pass `**cascade_kwargs` on to it (registered with
    `register_loadable(forwards_kwargs_to=CascadeBase)`, so saved configs record and may give them), and the
    config classes of `imagen_pytorch.configs` are derived from these signatures. Keyword arguments that can differ
    per U-Net accept a scalar (used for every stage) or one value per U-Net.
    """

    def __init__(
        self,
        unets: nn.Module | Sequence[nn.Module],
        *,
        image_sizes: int | Sequence[int],
        text_encoder_name: str = DEFAULT_T5_NAME,
        text_embed_dim: int | None = None,
        channels: int = 3,
        cond_drop_prob: float = 0.1,
        loss_type: str = "l2",
        random_crop_sizes: int | Sequence[int | None] | None = None,
        lowres_noise_schedule: str = "linear",
        lowres_sample_noise_level: float = 0.2,
        per_sample_random_aug_noise_level: bool = False,
        condition_on_text: bool = True,
        auto_normalize_img: bool = True,
        dynamic_thresholding: bool | Sequence[bool] = True,
        dynamic_thresholding_percentile: float = 0.95,
        only_train_unet_number: int | None = None,
        temporal_downsample_factor: int | Sequence[int] = 1,
        resize_cond_video_frames: bool = True,
        resize_mode: str = "nearest",
    ):
        super().__init__()
        # Any: the entries are only known to be modules (checked just below) that have cast_model_parameters
        unet_list: list[Any] = list(unets) if isinstance(unets, list | tuple) else [unets]
        if len(unet_list) == 0:
            raise ValueError("unets: expected at least one unet, got an empty sequence")
        for index, unet in enumerate(unet_list):
            if not isinstance(unet, nn.Module):
                raise TypeError(
                    f"unets[{index}]: expected a Unet / Unet3D / NullUnet module, got {type(unet).__name__}"
                )
        num_unets = len(unet_list)

        check_positive_int("channels", channels)
        check_in_range("cond_drop_prob", cond_drop_prob, 0.0, 1.0)
        check_choice("loss_type", loss_type, LOSS_TYPES)
        check_choice("lowres_noise_schedule", lowres_noise_schedule, ("linear", "cosine"))
        check_in_range("lowres_sample_noise_level", lowres_sample_noise_level, 0.0, 1.0)
        check_in_range("dynamic_thresholding_percentile", dynamic_thresholding_percentile, 0.5, 1.0)
        check_choice("resize_mode", resize_mode, RESIZE_MODES)

        self.channels = channels
        self.cond_drop_prob = cond_drop_prob
        self.loss_type = loss_type
        self.lowres_sample_noise_level = lowres_sample_noise_level
        self.per_sample_random_aug_noise_level = per_sample_random_aug_noise_level
        self.auto_normalize_img = auto_normalize_img
        self.dynamic_thresholding = per_unet("dynamic_thresholding", dynamic_thresholding, num_unets)
        self.dynamic_thresholding_percentile = dynamic_thresholding_percentile
        self.resize_cond_video_frames = resize_cond_video_frames
        self.resize_mode = resize_mode
        # the low-resolution conditioning is noised with its own schedule (noise augmentation, Imagen section 2.5)
        self.lowres_noise_schedule = ContinuousSchedule(lowres_noise_schedule)

        # text conditioning: the encoder is a plain attribute (not a submodule), so its weights never land in the
        # cascade's state dict or parameters(); its width is known without loading it (table or local config)
        self.condition_on_text = condition_on_text
        self.text_encoder_name = text_encoder_name
        self.text_encoder: TextEncoder | None = None
        if condition_on_text:
            self.text_encoder = TextEncoder(text_encoder_name)
            self.text_embed_dim: int | None = text_embed_dim if exists(text_embed_dim) else self.text_encoder.dim
        else:
            self.text_embed_dim = text_embed_dim

        # sizes
        self.image_sizes = per_unet("image_sizes", image_sizes, num_unets)
        for index, size in enumerate(self.image_sizes):
            check_positive_int(f"image_sizes[{index}]", size)
        if any(later < earlier for earlier, later in zip(self.image_sizes, self.image_sizes[1:])):
            raise ValueError(f"image_sizes: expected non-decreasing sizes along the cascade, got {self.image_sizes}")
        self.random_crop_sizes = per_unet("random_crop_sizes", random_crop_sizes, num_unets)
        for index, (crop, size) in enumerate(zip(self.random_crop_sizes, self.image_sizes)):
            if exists(crop):
                check_positive_int(f"random_crop_sizes[{index}]", crop)
                if crop > size:
                    raise ValueError(
                        f"random_crop_sizes[{index}]: expected at most the unet's image size {size}, got {crop}"
                    )
        self.temporal_downsample_factor = per_unet("temporal_downsample_factor", temporal_downsample_factor, num_unets)
        for index, factor in enumerate(self.temporal_downsample_factor):
            check_positive_int(f"temporal_downsample_factor[{index}]", factor)
        if self.temporal_downsample_factor[-1] != 1:
            raise ValueError(
                "temporal_downsample_factor: the last unet must generate every frame (factor 1), got "
                f"{self.temporal_downsample_factor}"
            )

        # the unets, cast to what their place in the cascade needs (lowres conditioning after the first stage,
        # the text encoder's width, the channel count)
        self.unets = nn.ModuleList()
        for index, unet in enumerate(unet_list):
            self.unets.append(
                unet.cast_model_parameters(
                    lowres_cond=index > 0,
                    text_embed_dim=self.text_embed_dim if condition_on_text else unet.text_embed_dim,
                    channels=channels,
                    channels_out=channels,
                    cond_on_text=condition_on_text,
                )
            )
        real_unets = [unet for unet in self.unets if not is_null_unet(unet)]
        if not real_unets:
            raise ValueError("unets: expected at least one unet that is not a NullUnet")
        video_flags = {bool(getattr(unet, "is_video", False)) for unet in real_unets}
        if len(video_flags) > 1:
            raise ValueError("unets: expected all image unets (Unet) or all video unets (Unet3D), got a mix")
        self.is_video = video_flags.pop()
        if not self.is_video and any(factor != 1 for factor in self.temporal_downsample_factor):
            raise ValueError("temporal_downsample_factor: only video cascades (Unet3D) can downsample in time")

        if exists(only_train_unet_number):
            self.check_unet_number("only_train_unet_number", only_train_unet_number)
        self.only_train_unet_number = only_train_unet_number

    # -- small accessors --------------------------------------------------------------------------------------

    @property
    def num_unets(self) -> int:
        return len(self.unets)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The U-Nets' parameter dtype: inputs in another float dtype are cast to it."""
        return next(self.parameters()).dtype

    def get_unet(self, unet_number: int) -> nn.Module:
        """The U-Net of stage `unet_number` (1-based, as everywhere in the public API)."""
        self.check_unet_number("unet_number", unet_number)
        return self.unets[unet_number - 1]

    def check_unet_number(self, name: str, unet_number: Any) -> int:
        """`unet_number` if it names a stage of this cascade (1-based), else a TypeError/ValueError naming `name`."""
        if isinstance(unet_number, bool) or not isinstance(unet_number, int):
            raise TypeError(f"{name}: expected an int in [1, {self.num_unets}], got {unet_number!r}")
        if not 1 <= unet_number <= self.num_unets:
            raise ValueError(
                f"{name}: expected a unet number in [1, {self.num_unets}] (this cascade has "
                f"{self.num_unets} unet(s)), got {unet_number}"
            )
        return unet_number

    # -- placement and conditioning switches of the published imagen-pytorch 2.1 API ------------------------------

    def force_unconditional_(self) -> CascadeBase:
        """From now on the cascade and its unets ignore text: training and sampling take no texts / text_embeds
        (the text encoder is dropped; the unets' text layers stay, unused). In place and in memory only: the
        recorded config still says `condition_on_text`, so a saved copy loads conditional again."""
        self.condition_on_text = False
        self.text_encoder = None
        for unet in self.unets:
            if isinstance(unet, NullUnet):  # placeholders only record the flag
                unet.cond_on_text = False
            else:  # every other stage is a Unet / Unet3D (the only modules with cast_model_parameters)
                cast(Unet, unet).force_unconditional_()
        return self

    def reset_unets_all_one_device(self, device: torch.device | str | None = None) -> CascadeBase:
        """Every unet on `device` (default: the accelerator device some unet is on, else the CPU), e.g. after
        `one_unet_in_gpu`."""
        if device is None:
            devices = [p.device for p in self.parameters() if p.device.type != "cpu"]
            device = devices[0] if devices else torch.device("cpu")
        self.unets.to(torch.device(device))
        return self

    @contextlib.contextmanager
    def one_unet_in_gpu(self, unet_number: int | None = None, unet: nn.Module | None = None) -> Iterator[nn.Module]:
        """Within the block, only unet `unet_number` (or the given `unet` of this cascade) is on the cascade's
        device and the others wait on the CPU (to fit large cascades into GPU memory); yields that unet. Each unet
        goes back to where it was afterwards."""
        if exists(unet_number) == exists(unet):
            raise ValueError("unet_number, unet: pass exactly one of them")
        if exists(unet_number):
            unet = self.unets[self.check_unet_number("unet_number", unet_number) - 1]
        elif unet is None or not any(unet is own for own in self.unets):
            raise ValueError("unet: expected one of this cascade's unets")
        device = self.device
        places = [next(own.parameters(), torch.empty(0)).device for own in self.unets]
        self.unets.to("cpu")
        unet.to(device)
        try:
            yield unet
        finally:
            for own, place in zip(self.unets, places):
                own.to(place)

    def normalize_img(self, x: Tensor) -> Tensor:
        return normalize_neg_one_to_one(x) if self.auto_normalize_img else x

    def unnormalize_img(self, x: Tensor) -> Tensor:
        return unnormalize_zero_to_one(x).clamp(0, 1) if self.auto_normalize_img else x.clamp(-1, 1)

    def threshold(self, x0: Tensor, index: int) -> Tensor:
        """Keep an x0 estimate in the data range: dynamic thresholding (Imagen) or a plain clamp."""
        if self.dynamic_thresholding[index]:
            return dynamic_threshold(x0, self.dynamic_thresholding_percentile)
        return static_threshold(x0)

    def reduce_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-sample loss (b,) of the configured `loss_type`, averaged over every other dim (the core's
        `per_sample_loss`, as the Gaussian stages' wrapper computes it)."""
        return per_sample_loss(pred, target, self.loss_type)

    # -- text -------------------------------------------------------------------------------------------------

    def encode_text(
        self,
        texts: Sequence[str] | None,
        text_embeds: Tensor | None,
        text_masks: Tensor | None,
        device: torch.device,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Text conditioning as (embeds (b, n, d), mask (b, n) bool) on `device`, from `texts` or `text_embeds`."""
        if not self.condition_on_text:
            if exists(texts) or exists(text_embeds):
                raise ValueError(
                    "texts/text_embeds: this cascade was built with condition_on_text=False and takes "
                    "no text; build it with condition_on_text=True to condition on text"
                )
            return None, None
        if exists(texts) and exists(text_embeds):
            raise ValueError("texts, text_embeds: pass one of them, not both")
        if exists(texts):
            if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
                raise TypeError("texts: expected a list of strings (one caption per sample)")
            if exists(text_masks):
                raise ValueError("text_masks: only used with text_embeds (texts are masked by the encoder)")
            if self.text_encoder is None:  # only after switching condition_on_text back on by hand
                raise ValueError("texts: this cascade has no text encoder; pass text_embeds instead")
            text_embeds, text_masks = self.text_encoder.encode(list(texts), device)
        if not exists(text_embeds):
            raise ValueError(
                "texts/text_embeds: this cascade is conditioned on text; pass texts=[...] or "
                f"text_embeds of shape (batch, tokens, {self.text_embed_dim}) "
                "(or build it with condition_on_text=False)"
            )
        check_tensor(
            "text_embeds",
            text_embeds,
            shape=("batch", "tokens", self.text_embed_dim),
            names=("batch", "tokens", "text_embed_dim"),
            dtype_floating=True,
        )
        text_embeds = check_embeddings("text_embeds", text_embeds, device=device, dtype=self.dtype)
        if exists(text_masks):
            check_tensor("text_masks", text_masks, shape=tuple(text_embeds.shape[:2]), names=("batch", "tokens"))
            text_masks = text_masks.to(device=device, dtype=torch.bool)
        else:
            # precomputed embeddings are zero where the caption was padded
            text_masks = (text_embeds != 0).any(dim=-1)
        return text_embeds, text_masks

    # -- low-resolution conditioning ----------------------------------------------------------------------------

    @overload
    def stage_frames(self, index: int, frames: int) -> int: ...

    @overload
    def stage_frames(self, index: int, frames: None) -> None: ...

    @overload
    def stage_frames(self, index: int, frames: int | None) -> int | None: ...

    def stage_frames(self, index: int, frames: int | None) -> int | None:
        """Frames generated by stage `index` when the final video has `frames` frames."""
        if not exists(frames):
            return None
        factor = self.temporal_downsample_factor[index]
        if frames % factor != 0:
            raise ValueError(
                f"video frames: expected a multiple of unet {index + 1}'s temporal_downsample_factor "
                f"{factor}, got {frames}"
            )
        return frames // factor

    def noised_lowres_cond(
        self, lowres: Tensor, index: int, noise_times: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """The low-resolution conditioning of stage `index`: the previous stage's image (already in [-1, 1]),
        resized to this stage's size (and frame count) with `resize_mode`, then noised at `noise_times` (b,).

        Training and sampling both go through here, so both see exactly the same normalisation, order and noise.
        """
        size = self.image_sizes[index]
        lowres = resize_image_to(lowres, size, mode=self.resize_mode)
        alpha, sigma = self.lowres_noise_schedule.alpha_sigma(noise_times)
        alpha, sigma = right_pad_dims_to(lowres, alpha), right_pad_dims_to(lowres, sigma)
        noise = torch.randn(
            lowres.shape,
            generator=generator,
            dtype=lowres.dtype,
            device=generator.device if exists(generator) else lowres.device,
        ).to(lowres.device)
        return (alpha * lowres + sigma * noise).to(lowres.dtype)

    def match_cond_frames(self, lowres: Tensor, frames: int) -> Tensor:
        """The previous stage's output with this stage's frame count (an image is repeated over the frames)."""
        if lowres.ndim == 4:
            return repeat(lowres, "b c h w -> b c t h w", t=frames)
        if lowres.shape[2] == frames:
            return lowres
        if not self.resize_cond_video_frames:
            raise ValueError(
                f"the previous stage made {lowres.shape[2]} frames but this stage makes {frames}; "
                "build the cascade with resize_cond_video_frames=True to resample them"
            )
        return resize_video_frames(lowres, frames)

    # -- input checks ---------------------------------------------------------------------------------------------

    def _check_pixels(self, name: str, x: Tensor, device: torch.device) -> Tensor:
        """Pixels at the API -> [-1, 1] in the model's dtype, by the rule every package shares (`check_pixels`):
        [0, 1] (a batch with negative values read as [-1, 1]), or always [-1, 1] with `auto_normalize_img=False`."""
        return check_pixels(
            name,
            x,
            device=device,
            dtype=self.dtype,
            input_range="auto" if self.auto_normalize_img else "symmetric",
            output_range="symmetric",
        )

    def _check_images(self, name: str, x: Any, device: torch.device, *, min_size: int | None = None) -> Tensor:
        """Checks images / videos given to the cascade; returns them in [-1, 1] (see `_check_pixels`)."""
        ndims = (4, 5) if self.is_video else (4,)
        layout = "(batch, channels, height, width)" + (
            " or (batch, channels, frames, height, width)" if self.is_video else ""
        )
        check_tensor(name, x, ndim=ndims)
        if x.shape[1] != self.channels:
            raise ValueError(f"{name}: expected {self.channels} channels in dim 1 {layout}, got shape {tuple(x.shape)}")
        if exists(min_size) and min(x.shape[-2:]) < min_size:
            raise ValueError(f"{name}: expected height and width of at least {min_size}, got shape {tuple(x.shape)}")
        return self._check_pixels(name, x, device)

    def _check_cond_images(self, cond_images: Tensor | None, device: torch.device) -> Tensor | None:
        if not exists(cond_images):
            return None
        check_tensor("cond_images", cond_images, ndim=(4, 5) if self.is_video else 4)
        return self._check_pixels("cond_images", cond_images, device)

    def video_conditioning(
        self,
        index: int,
        device: torch.device,
        batch: int,
        *,
        ignore_time: bool = False,
        cond_video_frames: Tensor | None = None,
        post_cond_video_frames: Tensor | None = None,
    ) -> dict[str, Any]:
        """The temporal keywords of stage `index`'s `Unet3D` (the published `Imagen` passes them through):
        `ignore_time` (every frame on its own, the temporal layers skipped) and known frames before
        (`cond_video_frames`) and after (`post_cond_video_frames`) the generated ones, (b, c, frames, h, w)
        pixels checked like every input, brought to the stage's size and, for a stage that generates every n-th
        frame (`temporal_downsample_factor`), to every n-th frame. {} when none is given."""
        if not isinstance(ignore_time, bool):
            raise TypeError(f"ignore_time: expected a bool, got {ignore_time!r}")
        given = {
            name: frames
            for name, frames in (
                ("cond_video_frames", cond_video_frames),
                ("post_cond_video_frames", post_cond_video_frames),
            )
            if exists(frames)
        }
        if not (ignore_time or given):
            return {}
        if not self.is_video:
            raise ValueError(
                f"{', '.join(['ignore_time'] * ignore_time + list(given))}: only video cascades "
                "(built from Unet3D) have temporal layers and frames to condition on"
            )
        kwargs: dict[str, Any] = {"ignore_time": True} if ignore_time else {}
        size, factor = self.image_sizes[index], self.temporal_downsample_factor[index]
        for name, frames in given.items():
            check_tensor(name, frames, ndim=5, names=("batch", "channels", "frames", "height", "width"))
            if frames.shape[0] != batch or frames.shape[1] != self.channels:
                raise ValueError(
                    f"{name}: expected shape ({batch}, {self.channels}, frames, height, width) (batch, "
                    f"channels, frames, height, width), got {tuple(frames.shape)}"
                )
            frames = self._check_pixels(name, frames, device)
            if factor > 1:
                frames = resize_video_frames(frames, max(1, frames.shape[2] // factor))
            kwargs[name] = resize_image_to(frames, size, mode=self.resize_mode)
        return kwargs

    # -- training -------------------------------------------------------------------------------------------------

    def resolve_train_unet_number(self, unet_number: int | None) -> int:
        if not exists(unet_number):
            if exists(self.only_train_unet_number):
                unet_number = self.only_train_unet_number
            elif self.num_unets == 1:
                unet_number = 1
            else:
                raise ValueError(f"unet_number: required to choose which of the {self.num_unets} unets to train")
        self.check_unet_number("unet_number", unet_number)
        if exists(self.only_train_unet_number) and unet_number != self.only_train_unet_number:
            raise ValueError(
                f"unet_number: this cascade only trains unet {self.only_train_unet_number} "
                f"(only_train_unet_number), got {unet_number}"
            )
        if is_null_unet(self.unets[unet_number - 1]):
            raise ValueError(f"unet_number: unet {unet_number} is a NullUnet placeholder and cannot be trained")
        return unet_number

    def forward(
        self,
        images_or_video: Tensor | None = None,
        unet_number: int | None = None,
        texts: Sequence[str] | None = None,
        text_embeds: Tensor | None = None,
        text_masks: Tensor | None = None,
        cond_images: Tensor | None = None,
        *,
        text_mask: Tensor | None = None,
        cond_drop_prob: float | None = None,
        ignore_time: bool = False,
        cond_video_frames: Tensor | None = None,
        post_cond_video_frames: Tensor | None = None,
        unet: nn.Module | None = None,
        images: Tensor | None = None,
    ) -> Tensor:
        """The training loss of stage `unet_number` on images (b, c, h, w) or videos (b, c, t, h, w) in [0, 1].

        `texts` (one caption per sample) or `text_embeds` (b, n, text_embed_dim) with optional `text_mask` (b, n)
        (the seed README's `text_masks`) condition on text, dropped per sample with `cond_drop_prob` (default:
        the constructor's). Images larger than the stage's size are resized down; a video cascade also takes
        images (trained as single frames with the temporal layers skipped), an image cascade one-frame videos
        (b, c, 1, h, w). `unet` replaces the stage's U-Net in this call (the trainer passes its distributed
        wrapper). Video cascades also take `ignore_time` and known frames (`cond_video_frames`,
        `post_cond_video_frames`), see `video_conditioning`. `images=` is the published keyword for the first
        argument.
        """
        images_or_video = resolve_alias("images_or_video", images_or_video, "images", images)
        if images_or_video is None:
            raise TypeError("images_or_video: required, the batch of images (b, c, h, w) or videos (b, c, t, h, w)")
        text = resolve_text(texts, text_embeds, text_mask, aliases={"text_masks": ("text_mask", text_masks)})
        texts, text_embeds, text_masks = text.texts, text.text_embeds, text.text_mask
        cond_drop_prob = check_in_range("cond_drop_prob", default(cond_drop_prob, self.cond_drop_prob), 0.0, 1.0)
        if (
            not self.is_video
            and isinstance(images_or_video, Tensor)
            and images_or_video.ndim == 5
            and images_or_video.shape[2] == 1
        ):
            images_or_video = images_or_video[:, :, 0]  # the protocol's one-frame video is an image here
        unet_number = self.resolve_train_unet_number(unet_number)
        index = unet_number - 1
        stage_unet = self.unets[index]  # attributes are read here; `unet` may be a distributed wrapper of it
        unet = unet if exists(unet) else stage_unet
        size = self.image_sizes[index]
        device = self.device
        x = self._check_images("images_or_video", images_or_video, device, min_size=size)  # in [-1, 1]
        batch = x.shape[0]
        check_batch_match(
            images_or_video=x, texts=texts, text_embeds=text_embeds, text_masks=text_masks, cond_images=cond_images
        )
        text_embeds, text_masks = self.encode_text(texts, text_embeds, text_masks, device)
        cond_images = self._check_cond_images(cond_images, device)
        video_cond = self.video_conditioning(
            index,
            device,
            batch,
            ignore_time=ignore_time,
            cond_video_frames=cond_video_frames,
            post_cond_video_frames=post_cond_video_frames,
        )

        frames = x.shape[2] if x.ndim == 5 else None
        if exists(frames):
            x = resize_video_frames(x, self.stage_frames(index, frames))

        lowres_cond_img = lowres_noise_times = None
        if stage_unet.lowres_cond:
            # what the previous stage would have produced: this sample at its size (and frame count)
            lowres = resize_image_to(x, self.image_sizes[index - 1])
            if exists(frames):
                lowres = resize_video_frames(lowres, self.stage_frames(index - 1, frames))
                lowres = self.match_cond_frames(lowres, x.shape[2])
            if self.per_sample_random_aug_noise_level:
                lowres_noise_times = torch.rand(batch, device=device)
            else:
                lowres_noise_times = torch.rand(1, device=device).expand(batch)
            lowres_cond_img = self.noised_lowres_cond(lowres, index, lowres_noise_times)

        x_start = resize_image_to(x, size)
        if exists(cond_images):
            cond_images = resize_image_to(cond_images, size, mode=self.resize_mode)
        crop = self.random_crop_sizes[index]
        if exists(crop) and crop < size:
            known = [name for name in ("cond_video_frames", "post_cond_video_frames") if name in video_cond]
            cropped_start, lowres_cond_img, cond_images, *cropped = random_crop(
                [x_start, lowres_cond_img, cond_images, *(video_cond[name] for name in known)], crop
            )
            x_start = cast(Tensor, cropped_start)  # random_crop returns None only for the entries that were None
            video_cond.update(zip(known, cropped))

        unet_kwargs = dict(
            text_embeds=text_embeds,
            text_mask=text_masks,
            cond_images=cond_images,
            lowres_cond_img=lowres_cond_img,
            lowres_noise_times=lowres_noise_times,
            **video_cond,
        )
        return self.stage_loss(unet, index, x_start, unet_kwargs, cond_drop_prob=cond_drop_prob)

    def self_cond_estimate(self, index: int, predict_x0) -> Tensor | None:
        """Self-conditioning in training (Chen et al. 2022): half of the time, the network first estimates x0
        without gradients and gets that estimate as an extra input. Always an x0 estimate (also with the v
        objective), thresholded exactly as during sampling."""
        if not getattr(self.unets[index], "self_cond", False) or bool(torch.rand(()) >= 0.5):
            return None
        with torch.no_grad():
            return self.threshold(predict_x0(), index).detach()

    def stage_loss(
        self, unet: nn.Module, index: int, x_start: Tensor, unet_kwargs: dict, cond_drop_prob: float | None = None
    ) -> Tensor:
        """The diffusion loss of stage `index` on `x_start` in [-1, 1], calling `unet` (the stage's U-Net or its
        distributed wrapper) with `unet_kwargs` and the text dropout `cond_drop_prob` (default: the
        constructor's); implemented by the formulation."""
        raise NotImplementedError

    # -- sampling -------------------------------------------------------------------------------------------------

    def sample_stage(self, unet: nn.Module, index: int, shape: tuple[int, ...], call: StageSampling) -> Tensor:
        """Sample one stage as `call` says; returns x0 in [-1, 1] of `shape`, its noise drawn from
        `call.generator` when given. Implemented by the formulation."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        texts: Sequence[str] | None = None,
        text_masks: Tensor | None = None,
        text_embeds: Tensor | None = None,
        video_frames: int | None = None,
        cond_images: Tensor | None = None,
        inpaint_images: Tensor | None = None,
        inpaint_videos: Tensor | None = None,
        inpaint_masks: Tensor | None = None,
        inpaint_resample_times: int = 5,
        init_images: Tensor | None = None,
        skip_steps: int | Sequence[int] | None = None,
        batch_size: int | None = None,
        cond_scale: float | Sequence[float] | None = None,
        lowres_sample_noise_level: float | None = None,
        start_at_unet_number: int = 1,
        start_image_or_video: Tensor | None = None,
        stop_at_unet_number: int | None = None,
        return_all_unet_outputs: bool = False,
        return_pil_images: bool = False,
        device: torch.device | str | None = None,
        use_tqdm: bool | None = None,
        sampler: str | None = None,
        steps: int | Sequence[int] | None = None,
        *,
        text_mask: Tensor | None = None,
        num_frames: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
        ignore_time: bool = False,
        cond_video_frames: Tensor | None = None,
        post_cond_video_frames: Tensor | None = None,
    ) -> Tensor | list:
        """Generate images (b, c, h, w) or videos (b, c, t, h, w) in [0, 1], stage after stage.

        - `texts` or `text_embeds`/`text_mask` (the seed README's `text_masks`) condition on text; a single
          text is repeated to `batch_size` (default 1); `cond_scale` (one or per unet, default 1) is the
          classifier-free guidance scale.
        - `num_frames` (alias `video_frames`): frames of a video cascade's videos; an image cascade returns
          images (b, c, h, w), one frame without its axis, and takes only `num_frames=1`.
        - `generator` draws every noise of the sampling (same seed, same output); `progress` (alias `use_tqdm`)
          shows the progress bars.
        - `start_at_unet_number` > 1 starts from `start_image_or_video` (in [0, 1]) as the previous stage's output;
          `stop_at_unet_number` stops early; `return_all_unet_outputs` returns every stage's output.
        - Inpainting: `inpaint_images` (b, c, h, w) (or `inpaint_videos`) and `inpaint_masks` (b, h, w) bool, True
          where new content is generated; pixels where the mask is False are kept from the given image.
        - `init_images` with `skip_steps`: start every stage from the noised init image and skip the first steps.
        - `sampler`/`steps` override the cascade's sampler and step count for this call.
        - Video cascades: `ignore_time` and known frames (`cond_video_frames`, `post_cond_video_frames`) as in
          training (`video_conditioning`).
        """
        text = resolve_text(texts, text_embeds, text_mask, aliases={"text_masks": ("text_mask", text_masks)})
        if exists(batch_size) and not text.is_empty:
            text = text.repeat_to(batch_size)
        texts, text_embeds, text_masks = text.texts, text.text_embeds, text.text_mask
        batch_size = default(batch_size, 1)
        cond_scale = 1.0 if cond_scale is None else cond_scale
        use_tqdm = resolve_alias("progress", progress, "use_tqdm", use_tqdm, True)
        video_frames = resolve_alias("num_frames", num_frames, "video_frames", video_frames)
        if not self.is_video and video_frames == 1:
            video_frames = None  # an image is a one-frame video
        was_training = self.training
        self.eval()
        try:
            return self._sample(
                texts=texts,
                text_masks=text_masks,
                text_embeds=text_embeds,
                video_frames=video_frames,
                cond_images=cond_images,
                inpaint_images=inpaint_images,
                inpaint_videos=inpaint_videos,
                inpaint_masks=inpaint_masks,
                inpaint_resample_times=inpaint_resample_times,
                init_images=init_images,
                skip_steps=skip_steps,
                batch_size=batch_size,
                cond_scale=cond_scale,
                lowres_sample_noise_level=lowres_sample_noise_level,
                start_at_unet_number=start_at_unet_number,
                start_image_or_video=start_image_or_video,
                stop_at_unet_number=stop_at_unet_number,
                return_all_unet_outputs=return_all_unet_outputs,
                return_pil_images=return_pil_images,
                device=device,
                use_tqdm=use_tqdm,
                sampler=sampler,
                steps=steps,
                generator=generator,
                video_conditioning=dict(
                    ignore_time=ignore_time,
                    cond_video_frames=cond_video_frames,
                    post_cond_video_frames=post_cond_video_frames,
                ),
            )
        finally:
            self.train(was_training)

    def _sample(
        self,
        *,
        texts,
        text_masks,
        text_embeds,
        video_frames,
        cond_images,
        inpaint_images,
        inpaint_videos,
        inpaint_masks,
        inpaint_resample_times,
        init_images,
        skip_steps,
        batch_size,
        cond_scale,
        lowres_sample_noise_level,
        start_at_unet_number,
        start_image_or_video,
        stop_at_unet_number,
        return_all_unet_outputs,
        return_pil_images,
        device,
        use_tqdm,
        sampler,
        steps,
        generator,
        video_conditioning=None,
    ):
        device = torch.device(device) if exists(device) else self.device
        num_unets = self.num_unets
        self.check_unet_number("start_at_unet_number", start_at_unet_number)
        stop_at_unet_number = default(stop_at_unet_number, num_unets)
        self.check_unet_number("stop_at_unet_number", stop_at_unet_number)
        if stop_at_unet_number < start_at_unet_number:
            raise ValueError(
                f"stop_at_unet_number: expected at least start_at_unet_number={start_at_unet_number}, "
                f"got {stop_at_unet_number}"
            )
        cond_scales = per_unet("cond_scale", cond_scale, num_unets)
        per_unet_names = isinstance(cond_scale, list | tuple)
        for index, scale in enumerate(cond_scales):
            check_guidance_scale(f"cond_scale[{index}]" if per_unet_names else "cond_scale", scale)
        skip_steps = per_unet("skip_steps", skip_steps, num_unets)
        per_unet_names = isinstance(steps, list | tuple)
        steps = per_unet("steps", steps, num_unets)
        for index, stage_steps in enumerate(steps):
            if exists(stage_steps):
                check_steps(f"steps[{index}]" if per_unet_names else "steps", stage_steps)
        lowres_sample_noise_level = default(lowres_sample_noise_level, self.lowres_sample_noise_level)
        check_in_range("lowres_sample_noise_level", lowres_sample_noise_level, 0.0, 1.0)
        check_positive_int("inpaint_resample_times", inpaint_resample_times)
        check_positive_int("batch_size", batch_size)

        # inputs, checked and in [-1, 1]
        if exists(inpaint_images) and exists(inpaint_videos):
            raise ValueError("inpaint_images, inpaint_videos: pass one of them, not both")
        inpaint_images = default(inpaint_images, inpaint_videos)
        if exists(inpaint_images):
            inpaint_images, keep_mask = self._check_inpainting(inpaint_images, inpaint_masks, device)
            keep_mask = keep_mask.to(device)
        elif exists(inpaint_masks):
            raise ValueError("inpaint_masks: given without inpaint_images/inpaint_videos")
        if exists(init_images):
            init_images = self._check_images("init_images", init_images, device)
        if exists(start_image_or_video):
            start_image_or_video = self._check_images("start_image_or_video", start_image_or_video, device)
        cond_images = self._check_cond_images(cond_images, device)

        batch = check_batch_match(
            texts=texts,
            text_embeds=text_embeds,
            text_masks=text_masks,
            inpaint_images=inpaint_images,
            init_images=init_images,
            cond_images=cond_images,
            start_image_or_video=start_image_or_video,
        )
        batch = default(batch, batch_size)
        text_embeds, text_masks = self.encode_text(texts, text_embeds, text_masks, device)

        # frames of the final video
        if self.is_video:
            for value in (inpaint_images, init_images):  # a given video fixes the frame count
                if exists(value) and value.ndim == 5:
                    video_frames = default(video_frames, value.shape[2])
            if not exists(video_frames):
                raise ValueError("video_frames: required to sample from a video cascade (Unet3D), e.g. video_frames=8")
            check_positive_int("video_frames", video_frames)
        elif exists(video_frames):
            raise ValueError("video_frames: only video cascades (built from Unet3D) generate videos")

        first = start_at_unet_number - 1
        image = start_image_or_video
        if first > 0 and not exists(image):
            raise ValueError(
                f"start_image_or_video: required when start_at_unet_number={start_at_unet_number} "
                "(the output of the previous unet, in [0, 1])"
            )
        if first == 0 and exists(image):
            raise ValueError("start_image_or_video: only used with start_at_unet_number > 1")

        outputs = []
        for index in range(first, stop_at_unet_number):
            unet = self.unets[index]
            if is_null_unet(unet):
                if not exists(image):
                    raise ValueError(
                        f"unet {index + 1} is a NullUnet placeholder: start sampling after it with "
                        f"start_at_unet_number={index + 2} and start_image_or_video=..."
                    )
                outputs.append(image)
                continue
            size = self.image_sizes[index]
            frames = self.stage_frames(index, video_frames) if self.is_video else None
            shape = (batch, self.channels, *((frames,) if exists(frames) else ()), size, size)

            lowres_cond_img = lowres_noise_times = None
            if unet.lowres_cond:
                lowres_noise_times = torch.full((batch,), float(lowres_sample_noise_level), device=device)
                lowres = self.match_cond_frames(image, frames) if exists(frames) else image
                lowres_cond_img = self.noised_lowres_cond(lowres, index, lowres_noise_times, generator=generator)

            inpaint = None
            if exists(inpaint_images):
                known = self._stage_video_or_image(inpaint_images, size, frames)
                keep = self._stage_mask(keep_mask, size, frames)
                inpaint = (known, keep)
            init = self._stage_video_or_image(init_images, size, frames) if exists(init_images) else None
            stage_cond_images = (
                resize_image_to(cond_images, size, mode=self.resize_mode) if exists(cond_images) else None
            )

            unet_kwargs = dict(
                text_embeds=text_embeds,
                text_mask=text_masks,
                cond_images=stage_cond_images,
                lowres_cond_img=lowres_cond_img,
                lowres_noise_times=lowres_noise_times,
                **self.video_conditioning(index, device, batch, **(video_conditioning or {})),
            )
            logger.debug("sampling unet %d of %d at %s", index + 1, num_unets, shape)
            image = self.sample_stage(
                unet,
                index,
                shape,
                StageSampling(
                    unet_kwargs=unet_kwargs,
                    cond_scale=cond_scales[index] if self.condition_on_text else 1.0,
                    inpaint=inpaint,
                    inpaint_resample_times=inpaint_resample_times,
                    init_images=init,
                    skip_steps=skip_steps[index],
                    sampler=sampler,
                    steps=steps[index],
                    use_tqdm=use_tqdm,
                    device=device,
                    generator=generator,
                ),
            )
            outputs.append(image)

        outputs = [self.unnormalize_img(output) for output in outputs]
        if return_pil_images:
            outputs = [self._to_pil(output) for output in outputs]
        return outputs if return_all_unet_outputs else outputs[-1]

    # -- sampling helpers -----------------------------------------------------------------------------------------

    def _check_inpainting(self, images: Tensor, masks: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """Checks inpainting inputs; returns the images in [-1, 1] and the keep mask (b, 1, [t,] h, w), True = keep."""
        images = self._check_images("inpaint_images", images, device)
        if not exists(masks):
            raise ValueError(
                "inpaint_masks: required with inpaint_images/inpaint_videos (bool, True where new content is generated)"
            )
        spatial = tuple(images.shape[-2:])
        if images.ndim == 5:
            expected = [(images.shape[0], *spatial), (images.shape[0], images.shape[2], *spatial)]
            layout = "(batch, height, width) or (batch, frames, height, width)"
        else:
            expected = [(images.shape[0], *spatial)]
            layout = "(batch, height, width)"
        if not isinstance(masks, Tensor):
            raise TypeError(f"inpaint_masks: expected a bool torch.Tensor {layout}, got {type(masks).__name__}")
        if tuple(masks.shape) not in expected:
            raise ValueError(
                f"inpaint_masks: expected shape {expected[0]} {layout} matching the inpaint images "
                f"{tuple(images.shape)}, got {tuple(masks.shape)}"
            )
        keep = ~masks.bool()
        keep = rearrange(keep, "b ... -> b 1 ...")
        if images.ndim == 5 and keep.ndim == 4:
            keep = keep.unsqueeze(2).expand(-1, -1, images.shape[2], -1, -1)
        return images, keep

    def _stage_video_or_image(self, x: Tensor, size: int, frames: int | None) -> Tensor:
        """An image or video given for the whole cascade, brought to one stage's frame count and size."""
        if exists(frames):
            x = resize_video_frames(x, frames) if x.ndim == 5 else repeat(x, "b c h w -> b c t h w", t=frames)
        return resize_image_to(x, size, mode=self.resize_mode)

    def _stage_mask(self, keep: Tensor, size: int, frames: int | None) -> Tensor:
        """The keep mask (b, 1, [t,] h, w) at one stage's frame count and size (nearest neighbour)."""
        mask = keep.float()
        if exists(frames):
            mask = (
                resize_video_frames(mask, frames) if mask.ndim == 5 else repeat(mask, "b c h w -> b c t h w", t=frames)
            )
        target = (*mask.shape[2:-2], size, size)
        if tuple(mask.shape[2:]) != target:
            mask = F.interpolate(mask, size=target, mode="nearest")
        return mask > 0.5

    def _to_pil(self, images: Tensor) -> list:
        from synthesis_core.video import tensor_to_pil, video_to_pil_frames

        images = images.detach().float().cpu()
        if images.ndim == 5:
            return [video_to_pil_frames(video) for video in images]
        return [tensor_to_pil(image) for image in images]
