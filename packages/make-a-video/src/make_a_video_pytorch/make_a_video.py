"""Text-to-video diffusion around a `SpaceTimeUnet`, and the frame interpolator that raises its frame rate.

A configuration of the core's diffusion wrapper (`synthesis_core.diffusion.DiffusionWrapper`: loss and its min-SNR
weighting, guidance closure, thresholding, the published DDPM internals `q_sample` ... `p_losses`); this module
adds the text encoder, the U-Net's inputs and the paper's recipe as API:

1. train on images: `model(images, ...)` with `(b, c, h, w)` batches trains the spatial layers only;
2. `MakeAVideo.from_image_model(image_model, num_frames=16)` builds the video model: the image weights plus
   temporal layers at their identity initialisation (so it starts as the image model applied to each frame);
3. fine-tune on videos, optionally with `freeze_spatial=True` (only the temporal layers learn);
4. `FrameInterpolator`: a model conditioned on keyframes (known frames + a mask channel concatenated to its input)
   that fills the frames in between: `interpolator.interpolate(video, factor=2)` doubles the frame rate of a
   sampled video and returns the given keyframes exactly.

Pixels are floats in [0, 1] at the API and [-1, 1] inside; `synthesis_core.checks.check_pixels` reads them by the
rule every package shares ([-1, 1] batches with a warning when clamped, uint8 divided by 255, other float dtypes
cast to the model's; NaN / inf, 0-255 floats, another device or an empty batch refused).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from make_a_video_pytorch.unet import SpaceTimeUnet
from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.checks import (
    check_batch_match,
    check_choice,
    check_embeddings,
    check_image_size,
    check_in_range,
    check_pixel_batch,
    check_pixels,
    check_positive_int,
    check_steps,
    check_tensor,
)
from synthesis_core.diffusion import (
    BETA_SCHEDULES,
    VP_SAMPLERS,
    DiffusionWrapper,
    DiscreteSchedule,
    sample_vp,
    sampling_times,
)
from synthesis_core.protocol import resolve_text
from synthesis_core.text import DEFAULT_T5_NAME, TextEncoder
from synthesis_core.utils import default, eval_decorator, exists

__all__ = ["MakeAVideo", "FrameInterpolator"]

logger = logging.getLogger(__name__)


class MakeAVideo(PretrainedMixin, DiffusionWrapper, nn.Module):
    """Text-to-video (and text-to-image) denoising diffusion with a `SpaceTimeUnet`.

    ```
    unet = SpaceTimeUnet(dim=64, dim_mults=(1, 2, 4, 8), text_embed_dim=768)
    model = MakeAVideo(unet, image_size=64, num_frames=16)
    loss = model(images, texts=captions)            # (b, 3, 64, 64): image pretraining, spatial layers only
    loss = model(videos, texts=captions)            # (b, 3, 16, 64, 64) in [0, 1]
    videos = model.sample(texts=['a whale breaching'], cond_scale=3.)   # (1, 3, 16, 64, 64) in [0, 1]
    ```

    Args:
        unet: the `SpaceTimeUnet` denoiser.
        image_size: frame size, an int or (height, width).
        num_frames: frames of sampled videos (training accepts any count the U-Net's temporal compression divides).
        channels: image channels (must match the U-Net).
        timesteps: steps of the discrete diffusion schedule (`beta_schedule`).
        text_encoder_name: T5/BERT hub name or local folder used to encode `texts` (loaded on first use, never
            part of the state dict); `text_embeds` can always be given instead. None: no text encoder, for a
            model fed precomputed `text_embeds` only (`texts=` then raises a ValueError).
        text_embed_dim: width of the text embeddings; must match the U-Net's (default: the U-Net's).
        cond_drop_prob: probability of dropping the text of a training item (trains the unconditional branch for
            classifier-free guidance).
        objective: what the U-Net predicts: 'v' (default), 'eps' or 'x0' (aliases as in the core).
        sampler, sample_steps: default sampler ('ddpm', 'ddim', 'dpmpp_2m') and number of model calls (at most
            `timesteps`).
        freeze_spatial: freeze the U-Net's spatial parameters (video fine-tuning of the temporal layers only).
        min_snr_gamma: min-SNR loss weighting (0 disables it).
        dynamic_thresholding: Imagen's dynamic thresholding of x0 when sampling (else clamped to [-1, 1]).
    """

    sample_steps: int  # the wrapper's is optional; this model always sets it (configure_diffusion in __init__)

    def __init__(
        self,
        unet: SpaceTimeUnet,
        *,
        image_size: int | Sequence[int],
        num_frames: int,
        channels: int = 3,
        timesteps: int = 1000,
        text_encoder_name: str | None = DEFAULT_T5_NAME,
        text_embed_dim: int | None = None,
        cond_drop_prob: float = 0.1,
        objective: str = "v",
        sampler: str = "dpmpp_2m",
        sample_steps: int = 25,
        freeze_spatial: bool = False,
        beta_schedule: str = "cosine",
        min_snr_gamma: float = 5.0,
        dynamic_thresholding: bool = False,
        text_max_length: int = 256,
    ):
        super().__init__()
        if not isinstance(unet, nn.Module) or not hasattr(unet, "temporal_factor"):
            raise TypeError(f"unet: expected a SpaceTimeUnet, got {type(unet).__name__}")
        check_positive_int("num_frames", num_frames)
        check_positive_int("channels", channels)
        check_positive_int("timesteps", timesteps)
        check_positive_int("sample_steps", sample_steps)
        check_choice("beta_schedule", beta_schedule, tuple(BETA_SCHEDULES))
        if sample_steps > timesteps:
            logger.info("sample_steps=%d exceeds timesteps=%d: sampling uses every timestep", sample_steps, timesteps)
            sample_steps = timesteps
        if unet.channels != channels:
            raise ValueError(f"channels: the unet takes {unet.channels} channels, got channels={channels}")
        self.image_size = check_image_size("image_size", image_size)
        for name, size in zip(("height", "width"), self.image_size):
            if size % unet.spatial_factor:
                raise ValueError(
                    f"image_size: the {name} {size} must be divisible by {unet.spatial_factor}, the "
                    "spatial downsampling of the unet (2 ** (len(dim_mults) - 1))"
                )
        if num_frames % unet.temporal_factor:
            raise ValueError(
                f"num_frames: expected a multiple of {unet.temporal_factor}, the temporal compression "
                f"of the unet (temporal_compression={unet.temporal_compression}), got {num_frames}"
            )
        if exists(text_embed_dim) and text_embed_dim != unet.text_embed_dim:
            raise ValueError(
                f"text_embed_dim: the unet was built with text_embed_dim={unet.text_embed_dim}, "
                f"got text_embed_dim={text_embed_dim}"
            )

        self.unet = unet
        self.num_frames = num_frames
        self.channels = channels
        self.configure_diffusion(
            schedule=DiscreteSchedule.from_name(beta_schedule, timesteps),
            objective=objective,
            loss_type="l2",
            min_snr_gamma=min_snr_gamma,
            dynamic_thresholding=dynamic_thresholding,
            cond_drop_prob=cond_drop_prob,
            sampler=sampler,
            sample_steps=sample_steps,
        )
        # a plain attribute (not a submodule): its frozen weights never enter the state dict, and load lazily;
        # none for an unconditional unet or text_encoder_name=None (precomputed text_embeds only)
        self.text_encoder: TextEncoder | None = None
        if exists(unet.text_embed_dim) and exists(text_encoder_name):
            self.text_encoder = TextEncoder(text_encoder_name, max_length=text_max_length)
        if freeze_spatial:
            unet.freeze_spatial()

    @property
    def network(self) -> nn.Module:
        return self.unet

    @property
    def conditions_on_text(self) -> bool:
        return exists(self.unet.text_embed_dim)

    # -- the paper's recipe --------------------------------------------------------------------------------------

    @classmethod
    def from_image_model(
        cls,
        image_model: MakeAVideo | SpaceTimeUnet,
        *,
        num_frames: int | None = None,
        freeze_spatial: bool = False,
        **overrides,
    ) -> MakeAVideo:
        """The video model of an image-trained one: its spatial weights, temporal layers at their identity init.

        `image_model` is a `MakeAVideo` trained on images (its settings are kept unless overridden) or a bare
        `SpaceTimeUnet` (then pass `image_size=` and `num_frames=`). The result's per-frame outputs equal the
        image model's (exactly without temporal compression; with it, for videos whose frames are equal).
        """
        if isinstance(image_model, MakeAVideo):
            image_unet = image_model.unet
            settings = {k: v for k, v in image_model.pretrained_config.items() if k != "unet"}
        elif isinstance(image_model, SpaceTimeUnet):
            image_unet = image_model
            settings = {}
        else:
            raise TypeError(f"image_model: expected a MakeAVideo or a SpaceTimeUnet, got {type(image_model).__name__}")
        settings.update(overrides)
        if exists(num_frames):
            settings["num_frames"] = num_frames
        if "num_frames" not in settings or "image_size" not in settings:
            raise ValueError("num_frames: pass num_frames= and image_size= when building from a bare SpaceTimeUnet")
        settings["freeze_spatial"] = freeze_spatial

        # a fresh U-Net of the same configuration has identity temporal layers; it takes the spatial weights only
        video_unet = type(image_unet).from_config(image_unet.pretrained_config)
        video_unet.load_spatial_state_dict(image_unet.state_dict())
        video_unet.to(next(image_unet.parameters()).device)
        return cls(video_unet, **settings)

    # -- inputs ----------------------------------------------------------------------------------------------

    def _check_pixels(
        self, name: str, x: Tensor, *, allow_images: bool = True, output_range: str = "symmetric"
    ) -> Tensor:
        """Validate a batch of videos (or images) at the API (`check_pixels`: [0, 1], or [-1, 1] read as such);
        return it in [-1, 1] (or [0, 1] with `output_range='unit'`) in the model's dtype."""
        check_pixel_batch(name, x, channels=self.channels, image_size=self.image_size, allow_images=allow_images)
        return check_pixels(name, x, device=self.device, dtype=self.dtype, output_range=output_range)

    def encode_text(
        self,
        texts: Sequence[str] | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        device: torch.device | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """`texts` (encoded by the text encoder) or `text_embeds`/`text_mask` -> `(embeds, mask)` on `device`."""
        if not self.conditions_on_text:
            if exists(texts) or exists(text_embeds):
                raise ValueError(
                    "texts: this model's unet was built without text_embed_dim, so it is unconditional; "
                    "build SpaceTimeUnet(text_embed_dim=...) to condition on text"
                )
            return None, None
        text = resolve_text(texts, text_embeds, text_mask)  # one caption, both given, a stray mask: clear errors
        texts, text_embeds, text_mask = text.texts, text.text_embeds, text.text_mask
        device = default(device, self.device)
        if exists(texts):
            if self.text_encoder is None:
                raise ValueError(
                    "texts: this model has no text encoder (built with text_encoder_name=None); pass "
                    "precomputed text_embeds= (and text_mask=) instead"
                )
            text_embeds, text_mask = self.text_encoder.encode(texts, device=device)
            if text_embeds.shape[-1] != self.unet.text_embed_dim:
                raise ValueError(
                    f"text_encoder_name: {self.text_encoder.name!r} gives {text_embeds.shape[-1]}-wide "
                    f"embeddings, the unet expects text_embed_dim={self.unet.text_embed_dim}"
                )
        if exists(text_embeds):
            check_tensor(
                "text_embeds",
                text_embeds,
                ndim=3,
                shape=("batch", None, self.unet.text_embed_dim),
                names=("batch", "tokens", "text_embed_dim"),
                dtype_floating=True,
            )
            text_embeds = check_embeddings("text_embeds", text_embeds, device=device, dtype=self.dtype)
            if exists(text_mask):
                check_tensor("text_mask", text_mask, shape=tuple(text_embeds.shape[:2]), names=("batch", "tokens"))
                text_mask = text_mask.to(device=device, dtype=torch.bool)
        elif exists(text_mask):
            raise ValueError("text_mask: given without text_embeds")
        return text_embeds, text_mask

    # -- training -------------------------------------------------------------------------------------------

    def forward(
        self,
        videos_or_images: Tensor,
        texts: Sequence[str] | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        cond_drop_prob: float | None = None,
        enable_time: bool = True,
        noise: Tensor | None = None,
        times: Tensor | None = None,
    ) -> Tensor:
        """The diffusion loss of a batch of videos `(b, c, t, h, w)` or images `(b, c, h, w)` in [0, 1].

        Images train the spatial layers only (time is skipped); so do videos with `enable_time=False` (every frame
        as an image). `texts` or `text_embeds` (+ `text_mask`) condition a text model; the text of each sample is
        dropped with `cond_drop_prob` (default: the constructor's). `noise` and `times` may be given for
        reproducibility.
        """
        x0 = self._check_pixels("videos_or_images", videos_or_images)
        return self.diffusion_loss(
            x0,
            texts=texts,
            text_embeds=text_embeds,
            text_mask=text_mask,
            cond_drop_prob=cond_drop_prob,
            enable_time=enable_time,
            noise=noise,
            times=times,
        )

    def diffusion_loss(  # type: ignore[override]  # this model's own inputs instead of predict= / **model_kwargs
        self,
        x0: Tensor,
        *,
        texts: Sequence[str] | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond: Tensor | None = None,
        loss_mask: Tensor | None = None,
        cond_drop_prob: float | None = None,
        enable_time: bool = True,
        noise: Tensor | None = None,
        times: Tensor | None = None,
    ) -> Tensor:
        """The wrapper's loss (min-SNR weighted l2) for `x0` already in [-1, 1], with this model's inputs: the text
        (encoded here, dropped with `cond_drop_prob`), `cond` for the U-Net's conditioning channels and `loss_mask`
        (broadcastable to `x0`, 1 = counted) restricting the loss to part of each sample. The published internal
        `p_losses(x_start, t, noise=..., texts=...)` comes here too."""
        cond_drop_prob = check_in_range("cond_drop_prob", default(cond_drop_prob, self.cond_drop_prob), 0.0, 1.0)
        text_embeds, text_mask = self.encode_text(texts, text_embeds, text_mask, device=x0.device)
        check_batch_match(videos_or_images=x0, text_embeds=text_embeds)
        return super().diffusion_loss(
            x0,
            times=times,
            noise=noise,
            loss_mask=loss_mask,
            text_embeds=text_embeds,
            text_mask=text_mask,
            cond=cond,
            cond_drop_prob=cond_drop_prob,
            enable_time=enable_time,
        )

    # -- sampling -------------------------------------------------------------------------------------------

    def _run_sampler(
        self,
        shape: tuple[int, ...],
        *,
        text_embeds: Tensor | None,
        text_mask: Tensor | None,
        cond: Tensor | None,
        cond_scale: float,
        rescale_phi: float,
        sampler: str | None,
        steps: int | None,
        generator: torch.Generator | None,
        progress: bool,
        inpaint: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        sampler = check_choice("sampler", default(sampler, self.sampler), VP_SAMPLERS)
        steps = check_steps("steps", default(steps, self.sample_steps), maximum=self.num_timesteps)
        device = self.device
        schedule = self.schedule.to(device)
        times = sampling_times(schedule, steps, device=device)
        x_T = self.initial_noise(shape, generator, device)
        denoise = self.denoiser(
            cond_scale, rescale_phi=rescale_phi, text_embeds=text_embeds, text_mask=text_mask, cond=cond
        )
        x0 = sample_vp(
            denoise, x_T, times, schedule, sampler=sampler, generator=generator, progress=progress, inpaint=inpaint
        )
        return self.to_pixels(x0)

    @torch.no_grad()
    @eval_decorator
    def sample(
        self,
        texts: Sequence[str] | None = None,
        text_embeds: Tensor | None = None,
        batch_size: int | None = None,
        num_frames: int | None = None,
        cond_scale: float | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        *,
        text_mask: Tensor | None = None,
        rescale_phi: float = 0.0,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Generate videos `(batch, channels, num_frames, h, w)` in [0, 1].

        `texts` or `text_embeds` set the batch size (else `batch_size`, default 1; a single text is repeated to
        `batch_size`); `cond_scale` (default 3) is the classifier-free guidance scale (1 = the plain conditional
        prediction). `sampler` / `steps` default to the constructor's. `generator` makes the noise deterministic.
        """
        text_embeds, text_mask = self.encode_text(texts, text_embeds, text_mask)
        cond_scale = default(cond_scale, 3.0)
        batch_size, (text_embeds, text_mask) = self.sampling_batch(batch_size, 1, text_embeds, text_mask)
        num_frames = check_positive_int("num_frames", default(num_frames, self.num_frames))
        if num_frames % self.unet.temporal_factor:
            raise ValueError(
                f"num_frames: expected a multiple of {self.unet.temporal_factor}, the temporal "
                f"compression of the unet, got {num_frames}"
            )
        if self.unet.cond_channels:
            raise ValueError(
                "unet: this model's unet takes conditioning channels (a FrameInterpolator?); "
                "use interpolate(video, factor) on a FrameInterpolator"
            )
        height, width = self.image_size
        shape = (batch_size, self.channels, num_frames, height, width)
        return self._run_sampler(
            shape,
            text_embeds=text_embeds,
            text_mask=text_mask,
            cond=None,
            cond_scale=cond_scale,
            rescale_phi=rescale_phi,
            sampler=sampler,
            steps=steps,
            generator=generator,
            progress=progress,
        )


class FrameInterpolator(MakeAVideo):
    """Masked frame interpolation: a `MakeAVideo` whose U-Net also sees the known frames and a mask channel.

    The U-Net must be built with `cond_channels=channels + 1`: the input is the noisy video concatenated with the
    known frames (zero elsewhere) and the mask (1 at known frames). Training keeps every `factor`-th frame of a
    video as known (a factor drawn from `factors` per batch) and learns the others; `interpolate(video, factor)`
    puts the frames of a low-frame-rate video at every `factor`-th position of a `factor` times longer video,
    fills in the rest by sampling, and returns the given keyframes exactly.

    ```
    interp_unet = SpaceTimeUnet(dim=64, dim_mults=(1, 2, 4), cond_channels=4, temporal_compression=False)
    interpolator = FrameInterpolator(interp_unet, image_size=64, num_frames=16)
    loss = interpolator(videos_16_frames, texts=captions)
    smooth = interpolator.interpolate(model.sample(texts=prompts, num_frames=8), factor=2)   # 16 frames
    ```
    All other arguments are `MakeAVideo`'s; `cond_drop_prob` drops the text only, never the keyframes.
    """

    def __init__(self, unet: SpaceTimeUnet, *, factors: int | Sequence[int] = (2,), **kwargs):
        super().__init__(unet, **kwargs)
        factor_tuple = tuple(factors) if isinstance(factors, (tuple, list)) else (factors,)
        if not factor_tuple:
            raise ValueError("factors: expected at least one interpolation factor, got an empty sequence")
        for factor in factor_tuple:
            check_positive_int("factors", factor)
            if factor < 2:
                raise ValueError(f"factors: an interpolation factor must be at least 2, got {factor_tuple!r}")
        if unet.cond_channels != self.channels + 1:
            raise ValueError(
                f"unet: a FrameInterpolator's unet needs cond_channels={self.channels + 1} (the known "
                f"frames and a mask channel), got cond_channels={unet.cond_channels}"
            )
        self.factors: tuple[int, ...] = factor_tuple

    @staticmethod
    def keyframe_mask(batch: int, frames: int, factor: int, device: torch.device | None = None) -> Tensor:
        """`(batch, 1, frames, 1, 1)` float mask, 1 at every `factor`-th frame (0, factor, 2 factor, ...)."""
        keep = (torch.arange(frames, device=device) % factor == 0).float()
        return rearrange(keep, "t -> 1 1 t 1 1").expand(batch, 1, frames, 1, 1)

    @staticmethod
    def keyframe_condition(x0: Tensor, keep: Tensor) -> Tensor:
        """The U-Net's conditioning channels: the known frames (zero elsewhere) and the mask."""
        keep = keep.to(x0.dtype)
        return torch.cat((x0 * keep, keep.expand(-1, 1, *x0.shape[2:])), dim=1)

    def forward(  # type: ignore[override]  # keyframe inputs instead of cond_drop_prob= / enable_time=
        self,
        videos: Tensor,
        texts: Sequence[str] | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        factor: int | None = None,
        keyframe_mask: Tensor | None = None,
        noise: Tensor | None = None,
        times: Tensor | None = None,
    ) -> Tensor:
        """The loss of filling in the non-key frames of `videos (b, c, t, h, w)` in [0, 1].

        Keyframes are every `factor`-th frame (default: drawn from `factors`), or where `keyframe_mask`
        (`(b, t)` or `(b, 1, t, 1, 1)`, 1 = known) says. The loss counts the unknown frames only.
        """
        x0 = self._check_pixels("videos", videos, allow_images=False)
        batch, _, frames = x0.shape[:3]
        if exists(keyframe_mask):
            if keyframe_mask.ndim == 2:
                check_tensor("keyframe_mask", keyframe_mask, shape=(batch, frames), names=("batch", "frames"))
                keyframe_mask = rearrange(keyframe_mask, "b t -> b 1 t 1 1")
            check_tensor("keyframe_mask", keyframe_mask, shape=(batch, 1, frames, 1, 1))
            keep = keyframe_mask.to(device=x0.device, dtype=x0.dtype)
        else:
            if factor is None:
                factor = self.factors[int(torch.randint(len(self.factors), ()))]
            check_positive_int("factor", factor)
            keep = self.keyframe_mask(batch, frames, factor, device=x0.device)
        return self.diffusion_loss(
            x0,
            texts=texts,
            text_embeds=text_embeds,
            text_mask=text_mask,
            cond=self.keyframe_condition(x0, keep),
            loss_mask=1 - keep,
            noise=noise,
            times=times,
        )

    @torch.no_grad()
    @eval_decorator
    def interpolate(
        self,
        video: Tensor,
        factor: int = 2,
        texts: Sequence[str] | None = None,
        text_embeds: Tensor | None = None,
        *,
        text_mask: Tensor | None = None,
        cond_scale: float = 1.0,
        rescale_phi: float = 0.0,
        sampler: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Raise the frame rate of `video (b, c, t, h, w)` in [0, 1] by `factor`: returns `(b, c, t * factor, h, w)`
        whose frames `0, factor, 2 factor, ...` are exactly the given frames and the others are generated."""
        if exists(steps):
            check_steps("steps", steps, maximum=self.num_timesteps)
        known_unit = self._check_pixels("video", video, allow_images=False, output_range="unit")
        x_known = known_unit * 2 - 1
        check_positive_int("factor", factor)
        if factor < 2:
            raise ValueError(f"factor: expected an interpolation factor of at least 2, got {factor}")
        batch, channels, frames, height, width = x_known.shape
        out_frames = frames * factor
        if out_frames % self.unet.temporal_factor:
            raise ValueError(
                f"factor: the interpolated video has {frames} * {factor} = {out_frames} frames, which "
                f"must be a multiple of {self.unet.temporal_factor} (the unet's temporal compression)"
            )
        text_embeds, text_mask = self.encode_text(texts, text_embeds, text_mask)
        check_batch_match(video=x_known, text_embeds=text_embeds)

        keep = self.keyframe_mask(batch, out_frames, factor, device=x_known.device)
        known = torch.zeros(batch, channels, out_frames, height, width, device=x_known.device, dtype=x_known.dtype)
        known[:, :, ::factor] = x_known
        # the keyframes condition the U-Net and are re-imposed (noised to the current time) at every step
        out = self._run_sampler(
            tuple(known.shape),
            text_embeds=text_embeds,
            text_mask=text_mask,
            cond=self.keyframe_condition(known, keep),
            cond_scale=cond_scale,
            rescale_phi=rescale_phi,
            sampler=sampler,
            steps=steps,
            generator=generator,
            progress=progress,
            inpaint=(known, keep),
        )
        # exactly the given pixels (the [0, 1] -> [-1, 1] -> [0, 1] round trip may round the last bit), as read
        # by the pixel rule (a uint8 or [-1, 1] video comes back in [0, 1] like the generated frames)
        out[:, :, ::factor] = known_unit.to(out)
        return out

    def sample(self, *args, **kwargs) -> Tensor:
        """A FrameInterpolator fills in frames between keyframes; it does not sample videos from scratch."""
        raise TypeError(
            "FrameInterpolator.sample: an interpolator needs keyframes, use interpolate(video, factor) "
            "on a video sampled by a MakeAVideo"
        )
