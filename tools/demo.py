"""The demo: train a small text-to-video model on the built-in shapes dataset, then sample prompts and score them.

    python3 tools/dev.py demo                                   # the default model, 3 minutes, CPU or GPU
    python3 tools/dev.py demo --model imagen --minutes 10 --device cuda
    python3 tools/dev.py demo --text-encoder /path/to/t5-small  # a frozen T5/BERT from a local folder
    python3 tools/demo.py --smoke --out /tmp/demo               # a seconds-long run of the whole pipeline

The data is `synthesis_core.shapes.ShapesVideoDataset` ("a red circle moving left", drawn on the fly, nothing
to download). The captions condition the model through a small word-level encoder trained together with it
(`SimpleTextEncoder`), or through a frozen T5/BERT loaded from a local folder (`--text-encoder`). Training runs
until the `--minutes` budget is spent (counted from the start of the script, imports included), then one video is
sampled per prompt and the caption scorer measures colour, shape and motion from their pixels.

Written to `--out`: the first `--gifs` prompts as gifs (frames enlarged to 64 px), `samples.png` (a contact sheet
of the same prompts: one per row, its frames left to right, the prompt written on the left) and `score.json` (the
scores of all `--num-samples` samples, what was measured in each, the settings and the timings).

Every model is driven through the one generation protocol of the packages (`synthesis_core.protocol`): the loss is
`model(videos, text_embeds=, text_mask=)` (token ids `texts=` for a model with its own text encoder) and the videos
`model.sample(text_embeds=, text_mask=, num_frames=, batch_size=, generator=, ...)`. Per model there is only a
preset (`PRESETS`): how to build it at demo size and, for a two-stage model, the tokenizer it trains first.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the --minutes budget counts from here, imports included

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import rearrange  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from synthesis_core.diffusion.wrapper import DiffusionWrapper  # noqa: E402
from synthesis_core.shapes import (  # noqa: E402
    COLORS,
    DIRECTIONS,
    SHAPES,
    CaptionScorer,
    ShapesVideoDataset,
    all_captions,
)
from synthesis_core.text import SimpleTextEncoder, TextEncoder, TextEncoderUnavailableError  # noqa: E402
from synthesis_core.video import save_video  # noqa: E402

logger = logging.getLogger("demo")

# the model that learns the prompted colours fastest on a 2-core CPU (`tools/bench.py --quality`, see
# benchmarks/README.md): all colours right after about 90 s of training, where imagen and make-a-video are near 50%
DEFAULT_MODEL = "video-diffusion"


class DemoError(Exception):
    """A problem the user can fix (a missing package, an impossible setting): reported as one clear line."""


# ----------------------------------------------------------------------------------------------------------------
# settings
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DemoConfig:
    """Everything that shapes a run; each model starts from its preset (`PRESETS`) and command-line flags override
    it."""

    image_size: int = 16
    num_frames: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    dim: int = 16  # base width of the model
    text_dim: int = 32  # width of the trained text encoder
    text_depth: int = 1  # transformer layers of the trained text encoder
    sample_steps: int = 25  # model calls (diffusion steps / MaskGIT iterations) per sample
    cond_scale: float = 3.0  # classifier-free guidance scale
    tokenizer_fraction: float = 0.4  # two-stage models (phenaki, nuwa): share of the budget for the tokenizer
    # diffusion models: share of the budget trained only on the noisiest tenth of the schedule, where the noisy input
    # hides where the shape is and only the caption can decide where each frame's content goes (the motion). A
    # uniform draw of noise levels puts a tenth of the steps there, and the direction is learned late or never
    # (measured: 17-25% direction after 1200 steps without, 71-96% with a 0.4 warm-up, see benchmarks/README.md)
    high_noise_warmup: float = 0.4
    num_samples: int = 48  # videos sampled and scored (the prompts cycle through every caption)
    gifs: int = 12  # prompts written as gifs and onto the contact sheet
    max_steps: int | None = None  # stop training after this many steps even if time is left
    sample_batch_size: int = 16


# a run of seconds that still goes through every stage (tests, a quick check of an installation)
SMOKE: dict = {
    "image_size": 8,
    "num_frames": 4,
    "batch_size": 2,
    "dim": 8,
    "text_dim": 8,
    "sample_steps": 2,
    "num_samples": 2,
    "gifs": 2,
    "max_steps": 2,
    "sample_batch_size": 2,
}


def make_config(model: str, smoke: bool = False, **overrides) -> DemoConfig:
    settings = {**PRESETS[model].settings}
    if smoke:
        settings.update(SMOKE)
        settings.update(PRESETS[model].smoke)
    settings.update({key: value for key, value in overrides.items() if value is not None})
    return DemoConfig(**settings)


def demo_prompts(count: int, images: bool = False) -> list[str]:
    """`count` prompts cycling through every caption so that each block of 12 has every colour-shape pair once
    and the directions rotate: the first handful already shows the whole vocabulary."""
    prompts = []
    for index in range(count):
        pair, block = index % (len(COLORS) * len(SHAPES)), index // (len(COLORS) * len(SHAPES))
        color, shape = list(COLORS)[pair % len(COLORS)], SHAPES[pair // len(COLORS)]
        direction = DIRECTIONS[(pair + block) % len(DIRECTIONS)]
        prompts.append(f"a {color} {shape}" + ("" if images else f" moving {direction}"))
    return prompts


# ----------------------------------------------------------------------------------------------------------------
# text conditioning
# ----------------------------------------------------------------------------------------------------------------


class CaptionEncoder(nn.Module):
    """Captions -> `(embeds (b, n, dim), mask (b, n))`.

    Either a `SimpleTextEncoder` trained with the model (its parameters are part of this module, so the demo's
    optimizer updates them), or a frozen T5/BERT from a local folder whose embeddings of every caption the dataset
    can produce are computed once up front.
    """

    def __init__(
        self,
        captions: Sequence[str],
        dim: int,
        depth: int,
        pretrained: str | None = None,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.trained = None
        if pretrained is None:
            self.trained = SimpleTextEncoder.from_captions(
                captions, dim=dim, depth=depth, max_length=8, heads=2, dim_head=max(dim // 2, 4)
            )
            self.dim = dim
            return
        encoder = TextEncoder(pretrained, max_length=32)
        embeds, mask = encoder.encode(list(captions), device)
        self.dim = encoder.dim
        self.table = {caption: index for index, caption in enumerate(captions)}
        self.register_buffer("frozen_embeds", embeds.float(), persistent=False)
        self.register_buffer("frozen_mask", mask.bool(), persistent=False)

    @property
    def vocab_size(self) -> int:
        if self.trained is None:
            raise DemoError("this model trains its own text encoder on token ids; --text-encoder is not supported")
        return len(self.trained.vocab)

    def tokenize(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        if self.trained is None:
            raise DemoError("this model trains its own text encoder on token ids; --text-encoder is not supported")
        return self.trained.tokenize(captions)

    def forward(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        if self.trained is not None:
            return self.trained.encode(captions)
        rows = torch.tensor([self.table[caption] for caption in captions], device=self.frozen_embeds.device)
        return self.frozen_embeds[rows], self.frozen_mask[rows]


# ----------------------------------------------------------------------------------------------------------------
# the models: one preset each (how to build it at demo size); training and sampling go through the generation
# protocol that every top-level model implements (`synthesis_core.protocol`)
# ----------------------------------------------------------------------------------------------------------------


class PackageNames:
    """The names a builder takes from a model package; a name an older install lacks is one clear DemoError."""

    def __init__(self, model: str):
        preset = PRESETS[model]
        try:
            self.module = __import__(preset.package)
        except ImportError as err:
            raise DemoError(
                f"--model {model} needs the package {preset.distribution} (import {preset.package}), "
                f"which cannot be imported here ({err}). Install it (`pip install -e packages/...` or "
                f"`pip install {preset.distribution}`) or pick another --model from "
                f"{', '.join(MODELS)}."
            ) from err
        self.model, self.distribution = model, preset.distribution

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("module", "model", "distribution"):
            raise AttributeError(name)  # not a package name (copy and pickle look these up before __init__ ran)
        try:
            return getattr(self.module, name)
        except AttributeError:
            raise DemoError(
                f"--model {self.model}: the installed {self.distribution} does not provide {name} yet; "
                f"pick another --model from {', '.join(MODELS)}."
            ) from None


def build_video_diffusion(
    names: PackageNames, config: DemoConfig, text: CaptionEncoder, tokenizer: nn.Module | None
) -> nn.Module:
    """`Unet3D` + `GaussianDiffusion`, conditioned on the caption embedding pooled by its mean over the mask."""
    unet = names.Unet3D(
        dim=config.dim,
        cond_dim=text.dim,
        dim_mults=(1, 2),
        attn_heads=2,
        attn_dim_head=16,
        init_kernel_size=3,
        use_sparse_linear_attn=False,
    )
    return names.GaussianDiffusion(
        unet,
        image_size=config.image_size,
        num_frames=config.num_frames,
        timesteps=1000,
        loss_type="l2",
        objective="v",
        cond_drop_prob=0.1,
        sampler="ddim",
    )


def build_imagen(
    names: PackageNames, config: DemoConfig, text: CaptionEncoder, tokenizer: nn.Module | None
) -> nn.Module:
    """One `Unet3D` stage of `Imagen` (continuous time), cross-attending to the caption tokens."""
    unet = names.Unet3D(
        dim=config.dim,
        dim_mults=(1, 2),
        text_embed_dim=text.dim,
        num_resnet_blocks=1,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
        attn_heads=2,
        attn_dim_head=16,
        max_text_len=8,
        init_cross_embed=False,
        init_conv_kernel_size=3,
        use_global_context_attn=False,
        attn_pool_num_latents=4,
    )
    return names.Imagen(
        unets=unet,
        image_sizes=config.image_size,
        text_embed_dim=text.dim,
        timesteps=1000,
        cond_drop_prob=0.1,
        pred_objectives="v",
        sampler="ddim",
    )


def build_make_a_video(
    names: PackageNames, config: DemoConfig, text: CaptionEncoder, tokenizer: nn.Module | None
) -> nn.Module:
    """A `SpaceTimeUnet` (pseudo-3D convs, spatio-temporal attention) in `MakeAVideo`."""
    unet = names.SpaceTimeUnet(
        dim=config.dim,
        dim_mults=(1, 2),
        self_attns=(False, True),
        temporal_compression=(False, False),
        resnet_block_depths=(1, 1),
        attn_dim_head=16,
        attn_heads=2,
        text_embed_dim=text.dim,
        ff_mult=2,
    )
    return names.MakeAVideo(
        unet,
        image_size=config.image_size,
        num_frames=config.num_frames,
        timesteps=1000,
        objective="v",
        sampler="ddim",
        sample_steps=config.sample_steps,
    )


def build_cvivit(names: PackageNames, config: DemoConfig) -> nn.Module:
    if (config.num_frames - 1) % 2:
        raise DemoError(f"--frames: phenaki's tokenizer takes 1 + 2k frames (e.g. 5, 9), got {config.num_frames}")
    return names.CViViT(
        dim=config.dim,
        codebook_size=256,
        image_size=config.image_size,
        patch_size=max(config.image_size // 4, 1),
        temporal_patch_size=2,
        spatial_depth=1,
        temporal_depth=1,
        dim_head=16,
        heads=2,
        use_vgg_and_gan=False,
    )


def build_phenaki(names: PackageNames, config: DemoConfig, text: CaptionEncoder, tokenizer: nn.Module) -> nn.Module:
    """MaskGIT on the trained C-ViViT's tokens, conditioned on the caption tokens (building it freezes the C-ViViT)."""
    patch = max(config.image_size // 4, 1)
    tokens = (1 + (config.num_frames - 1) // 2) * (config.image_size // patch) ** 2
    maskgit = names.MaskGit(
        num_tokens=256, max_seq_len=tokens, dim=config.dim, dim_context=text.dim, depth=2, heads=2, dim_head=16
    )
    return names.Phenaki(
        cvivit=tokenizer, maskgit=maskgit, text_encoder_name=None, text_embed_dim=text.dim, steps=config.sample_steps
    )


def build_vqgan_vae(names: PackageNames, config: DemoConfig) -> nn.Module:
    return names.VQGanVAE(
        dim=config.dim,
        image_size=config.image_size,
        num_layers=2,
        vq_codebook_size=256,
        use_attn=False,
        resnet_groups=8,
        first_conv_kernel_size=3,
        use_vgg_and_gan=False,
    )


def build_nuwa(names: PackageNames, config: DemoConfig, text: CaptionEncoder, tokenizer: nn.Module) -> nn.Module:
    """The NUWA transformer on the trained VAE's tokens (building it freezes the VAE), with its own text encoder."""
    return names.NUWA(
        vae=tokenizer,
        dim=config.dim,
        text_num_tokens=text.vocab_size,
        text_enc_depth=1,
        text_enc_heads=2,
        text_enc_dim_head=16,
        text_max_seq_len=8,
        max_video_frames=config.num_frames,
        dec_depth=2,
        dec_heads=2,
        dec_dim_head=16,
        sparse_3dna_dilation=(1, 2),
    )


@dataclasses.dataclass(frozen=True)
class Preset:
    """How the demo builds one model; everything else is the same for all of them."""

    package: str  # import name
    distribution: str  # pip name
    build: Callable[..., nn.Module]  # (names, config, text, tokenizer) -> the top-level model
    settings: dict = dataclasses.field(default_factory=dict)  # what differs from DemoConfig's defaults
    smoke: dict = dataclasses.field(default_factory=dict)  # what differs from SMOKE
    # two-stage models: (names, config) -> the tokenizer trained first (the first `tokenizer_fraction` of the
    # budget); its training loss is `tokenizer(rearrange(videos, "b c t h w -> " + tokenizer_layout), **tokenizer_loss)`
    tokenizer: Callable[..., nn.Module] | None = None
    tokenizer_layout: str = "b c t h w"
    tokenizer_loss: dict = dataclasses.field(default_factory=dict)
    reads_token_ids: bool = False  # the model has its own text encoder: `texts=` the captions' token ids
    sample_settings: tuple[str, ...] = ("cond_scale", "steps")  # protocol keywords of `sample` it accepts


# sizes chosen so that a step costs about the same few GFLOPs; the caption score each reaches in a few CPU minutes
# is measured by `tools/bench.py --quality`
PRESETS: dict[str, Preset] = {
    # a higher learning rate: the (caption x frame) motion term starts at zero and must grow within the warm-up
    "video-diffusion": Preset(
        "video_diffusion_pytorch", "video-diffusion-pytorch", build_video_diffusion, settings={"lr": 2e-3}
    ),
    "imagen": Preset("imagen_pytorch", "imagen-pytorch", build_imagen),
    "make-a-video": Preset("make_a_video_pytorch", "make-a-video-pytorch", build_make_a_video),
    "phenaki": Preset(
        "phenaki_pytorch",
        "phenaki-pytorch",
        build_phenaki,
        tokenizer=build_cvivit,
        settings={"num_frames": 9, "dim": 64, "sample_steps": 12},  # the tokenizer takes 1 + 2k frames
        smoke={"num_frames": 5, "dim": 16},
    ),
    "nuwa": Preset(
        "nuwa_pytorch",
        "nuwa-pytorch",
        build_nuwa,
        tokenizer=build_vqgan_vae,
        tokenizer_layout="(b t) c h w",
        tokenizer_loss={"return_loss": True},  # an image autoencoder
        reads_token_ids=True,
        sample_settings=("cond_scale",),  # autoregressive: no steps
        settings={"dim": 32},
        smoke={"num_frames": 4, "dim": 16},
    ),
}
MODELS = tuple(PRESETS)


class DemoModel(nn.Module):
    """Everything the demo trains: the caption encoder, the tokenizer of a two-stage model, and the model.

    `loss(videos, captions)` gets videos `(b, 3, t, h, w)` in [0, 1]; `generate(captions, generator)` returns
    videos `(b, 3, t, h, w)` in [0, 1]. A two-stage model trains its tokenizer until the progress reaches
    `tokenizer_fraction`; then the model is built on it (`start_stage("generator")`) and trained.
    """

    def __init__(self, model: str, config: DemoConfig, text: CaptionEncoder):
        super().__init__()
        self.preset, self.config, self.num_frames = PRESETS[model], config, config.num_frames
        self.names = PackageNames(model)
        self.text = text
        self.tokenizer = self.preset.tokenizer(self.names, config) if self.preset.tokenizer is not None else None
        self.video_model = None if self.tokenizer is not None else self.preset.build(self.names, config, text, None)

    def stage(self, progress: float) -> str:
        """The name of the training stage at `progress` (a fraction of the budget)."""
        if self.tokenizer is None:
            return "train"
        return "tokenizer" if progress < self.config.tokenizer_fraction else "generator"

    def start_stage(self, stage: str) -> None:
        """Called when `stage` begins (before its optimizer is made): two-stage models build the model."""
        if stage == "generator" and self.video_model is None:
            device = next(self.tokenizer.parameters()).device
            self.video_model = self.preset.build(self.names, self.config, self.text, self.tokenizer).to(device)

    def train(self, mode: bool = True) -> DemoModel:
        super().train(mode)
        if self.video_model is not None:
            self.video_model.train(mode)  # last, so that its rule holds: a frozen tokenizer stays in eval mode
        return self

    def warm_up(self, progress: float) -> None:
        """Diffusion models train on the noisiest tenth of their schedule until `high_noise_warmup`, then on all of
        it."""
        if isinstance(self.video_model, DiffusionWrapper):
            warming = progress < self.config.high_noise_warmup
            self.video_model.training_time_range = (0.9, 1.0) if warming else (0.0, 1.0)

    def text_condition(self, captions: Sequence[str]) -> dict[str, Tensor]:
        if self.preset.reads_token_ids:
            return {"texts": self.text.tokenize(captions)[0]}
        embeds, mask = self.text(captions)
        return {"text_embeds": embeds, "text_mask": mask}

    def loss(self, videos: Tensor, captions: Sequence[str]) -> Tensor:
        if self.video_model is None:
            inputs = rearrange(videos, f"b c t h w -> {self.preset.tokenizer_layout}")
            return self.tokenizer(inputs, **self.preset.tokenizer_loss)
        return self.video_model(videos, **self.text_condition(captions))

    def generate(self, captions: Sequence[str], generator: torch.Generator | None = None) -> Tensor:
        self.start_stage("generator")
        settings = {"cond_scale": self.config.cond_scale, "steps": self.config.sample_steps}
        return self.video_model.sample(
            **self.text_condition(captions),
            num_frames=self.num_frames,
            batch_size=len(captions),
            generator=generator,
            progress=False,
            **{name: settings[name] for name in self.preset.sample_settings},
        )


def build_model(
    model: str, config: DemoConfig, text_encoder: str | None = None, device: torch.device | str = "cpu"
) -> DemoModel:
    """The demo's model for `model`, with its caption encoder (trained with it, or frozen from `text_encoder`)."""
    if model not in PRESETS:
        raise DemoError(f"--model: expected one of {', '.join(MODELS)}, got {model!r}")
    if PRESETS[model].reads_token_ids and text_encoder is not None:
        raise DemoError(f"--text-encoder: --model {model} trains its own text encoder on token ids; drop the flag")
    # the encoder's vocabulary (or the frozen encoder's table) covers every caption the dataset can produce
    try:
        text = CaptionEncoder(all_captions(), config.text_dim, config.text_depth, text_encoder, device=device)
    except TextEncoderUnavailableError as err:
        raise DemoError(f"--text-encoder: {err}") from err
    return DemoModel(model, config, text).to(device)


# ----------------------------------------------------------------------------------------------------------------
# training and sampling
# ----------------------------------------------------------------------------------------------------------------


def batches(dataset: ShapesVideoDataset, batch_size: int, seed: int):
    """An endless stream of shuffled `(videos, captions)` batches (the dataset draws each video on the fly)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            items = [dataset[index] for index in order[start : start + batch_size]]
            yield torch.stack([video for video, _ in items]), [caption for _, caption in items]


class DemoTrainer:
    """The training loop, with state that survives pauses (the benchmark samples the model between segments).

    Progress is the fraction of the `budget` (seconds of training) spent, or of `config.max_steps` when that is
    further along; `run(until)` trains until the progress reaches `until` (default: all of it). The stage of a
    two-stage model follows the progress.
    """

    def __init__(self, model: DemoModel, config: DemoConfig, *, budget: float, device: torch.device, seed: int):
        self.model, self.config, self.device = model, config, device
        self.budget = max(budget, 1e-6)
        dataset = ShapesVideoDataset(100_000, image_size=config.image_size, num_frames=model.num_frames, seed=seed)
        self.stream = batches(dataset, config.batch_size, seed)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.steps, self.losses = 0, []
        self.train_seconds = self.train_cpu_seconds = 0.0
        self.stage, self.optimizer, self.trainable = None, None, []

    def progress(self) -> float:
        fraction = self.train_seconds / self.budget
        if self.config.max_steps is not None:
            fraction = max(fraction, self.steps / self.config.max_steps)
        return fraction

    def done(self, until: float) -> bool:
        return self.progress() >= until

    def step(self) -> float:
        fraction = self.progress()
        if self.model.stage(fraction) != self.stage:
            # a new stage (two-stage models: tokenizer, then generator) gets a fresh optimizer over what it trains
            self.stage = self.model.stage(fraction)
            self.model.start_stage(self.stage)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(self.trainable, lr=self.config.lr, weight_decay=0.0)
        self.model.train()
        self.model.warm_up(fraction)
        videos, captions = next(self.stream)
        with self.autocast:
            loss = self.model.loss(videos.to(self.device), captions)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.steps += 1
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def run(self, until: float = 1.0, progress_bar: bool = True) -> DemoTrainer:
        bar = tqdm(
            total=100,
            initial=round(100 * min(self.progress(), 1)),
            desc="training",
            unit="%",
            disable=not progress_bar,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}",
        )
        while not self.done(until):
            started, cpu_started = time.monotonic(), time.process_time()
            self.step()
            self.train_seconds += time.monotonic() - started
            self.train_cpu_seconds += time.process_time() - cpu_started
            bar.set_postfix_str(f"step {self.steps}, {self.stage} loss {self.recent_loss():.4f}")
            bar.update(round(100 * min(self.progress(), 1)) - bar.n)
        bar.close()
        return self

    def recent_loss(self, last: int = 20) -> float:
        recent = self.losses[-last:]
        return sum(recent) / max(len(recent), 1)


@torch.no_grad()
def generate(model: DemoModel, prompts: Sequence[str], batch_size: int, device: torch.device, seed: int) -> Tensor:
    """One video per prompt, `(n, 3, t, h, w)` in [0, 1] on the CPU; the same `seed` gives the same videos (the
    model's noise comes from a generator of its own: the global random state, which training draws from, is left
    alone)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise whatever the model's device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    videos = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="sampling", unit="batch"):
        with autocast:
            videos.append(model.generate(list(prompts[start : start + batch_size]), generator).float().cpu())
    return torch.cat(videos).clamp(0, 1)


def upscale(videos: Tensor, min_size: int = 64) -> Tensor:
    """Nearest-neighbour enlargement so that tiny frames are visible in a viewer (pixels stay sharp squares)."""
    factor = max(1, math.ceil(min_size / videos.shape[-1]))
    if factor == 1:
        return videos
    frames = rearrange(videos, "b c t h w -> (b t) c h w")
    frames = F.interpolate(frames, scale_factor=factor, mode="nearest")
    return rearrange(frames, "(b t) c h w -> b c t h w", b=videos.shape[0])


def labelled_sheet(videos: Tensor, prompts: Sequence[str], path: Path) -> Path:
    """The core's contact sheet (one video per row) with each row's prompt written to its left."""
    from PIL import Image, ImageDraw

    save_video(videos, path)
    sheet = Image.open(path).convert("RGB")
    row_height = sheet.height // len(prompts)
    label_width = 8 + 6 * max(len(prompt) for prompt in prompts)
    canvas = Image.new("RGB", (label_width + sheet.width, sheet.height), (255, 255, 255))
    canvas.paste(sheet, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    for row, prompt in enumerate(prompts):
        draw.text((4, row * row_height + row_height // 2 - 5), prompt, fill=(0, 0, 0))
    canvas.save(path)
    return path


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL, help="which package's model to train")
    parser.add_argument(
        "--minutes",
        type=float,
        default=3.0,
        help="time budget for everything before sampling (imports, building, training)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the gifs, png and scores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--text-encoder",
        default=None,
        metavar="PATH",
        help="a local T5/BERT folder to condition on (frozen) instead of training a small encoder",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings that run in seconds (for tests)")
    tuning = parser.add_argument_group("settings (default: the model's preset)")
    for field in dataclasses.fields(DemoConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "num_frames":
            flag = "--frames"
        kind = float if "float" in str(field.type) else int
        tuning.add_argument(flag, dest=field.name, type=kind, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: torch's, fewer when other processes keep the CPUs busy)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def pick_threads(requested: int | None = None) -> int:
    """CPU threads for torch: `requested`, else torch's default, lowered on a machine that other processes keep
    busy (by the 1-minute load average): OpenMP threads that share cores with other work wait on each other at
    every operation, and a step can become ten times slower than with one thread."""
    if requested is not None:
        return max(1, requested)
    threads = torch.get_num_threads()
    try:
        busy = int(os.getloadavg()[0])  # processes kept running by others, rounded down
    except (AttributeError, OSError):  # not available on this platform
        return threads
    return max(1, min(threads, (os.cpu_count() or threads) - busy))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda: no CUDA GPU is available to torch here; use --device cpu")
    return torch.device(name)


def run(args: argparse.Namespace, started: float | None = None) -> dict:
    """The whole demo; returns what it writes to score.json. The budget counts from `started` (default: now)."""
    started = time.monotonic() if started is None else started
    overrides = {field.name: getattr(args, field.name) for field in dataclasses.fields(DemoConfig)}
    config = make_config(args.model, smoke=args.smoke, **overrides)
    device = pick_device(args.device)
    deadline = started + args.minutes * 60
    torch.manual_seed(args.seed)
    if device.type == "cpu":
        torch.set_num_threads(pick_threads(args.threads))

    model = build_model(args.model, config, text_encoder=args.text_encoder, device=device)
    parameters = sum(p.numel() for p in model.parameters())
    text_kind = (
        f"a frozen encoder from {args.text_encoder}" if args.text_encoder else "a small text encoder trained with it"
    )
    where = f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)
    logger.info(
        "training %s (%.2fM parameters, %s) on %dx%d videos of %d frames, batch %d, on %s for %.1f minutes",
        args.model,
        parameters / 1e6,
        text_kind,
        config.image_size,
        config.image_size,
        model.num_frames,
        config.batch_size,
        where,
        args.minutes,
    )
    trainer = DemoTrainer(model, config, budget=deadline - time.monotonic(), device=device, seed=args.seed)
    trainer.run(progress_bar=not args.quiet)
    trained_at = time.monotonic()

    prompts = demo_prompts(config.num_samples)
    videos = generate(model, prompts, config.sample_batch_size, device, args.seed)
    sample_seconds = time.monotonic() - trained_at

    scorer = CaptionScorer()
    score = scorer.score(videos, prompts)
    args.out.mkdir(parents=True, exist_ok=True)
    shown = min(config.gifs, len(prompts))
    big = upscale(videos[:shown])
    for index in range(shown):
        save_video(big[index], args.out / f"{index:02d}-{slug(prompts[index])}.gif", fps=4)
    labelled_sheet(big, prompts[:shown], args.out / "samples.png")

    result = {
        "model": args.model,
        "score": {
            key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in score.items()
        },
        "meaning": scorer.describe(score),
        "steps": trainer.steps,
        "final_loss": trainer.recent_loss(),
        "train_seconds": round(trainer.train_seconds, 1),
        "train_cpu_seconds": round(trainer.train_cpu_seconds, 1),
        "sample_seconds": round(sample_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": dataclasses.asdict(config),
        "seed": args.seed,
        "text_encoder": args.text_encoder or "trained SimpleTextEncoder",
        "prompts": prompts,
        "measured": [scorer.measure(video) for video in videos],
    }
    (args.out / "score.json").write_text(json.dumps(result, indent=2) + "\n")
    logger.info(
        "trained %d steps in %.0f s, sampled %d videos in %.0f s",
        trainer.steps,
        trainer.train_seconds,
        len(prompts),
        sample_seconds,
    )
    logger.info(
        "caption score: colour %.0f%%, shape %.0f%%, direction %.0f%%, all %.0f%%",
        100 * score["color"],
        100 * score["shape"],
        100 * (0 if math.isnan(score["direction"]) else score["direction"]),
        100 * score["all"],
    )
    logger.info("%s", result["meaning"])
    logger.info("wrote %d gifs, %s and %s", shown, args.out / "samples.png", args.out / "score.json")
    return result


def main(argv: Sequence[str] | None = None, started: float | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    args = parse_args(argv)
    try:
        run(args, started)
    except DemoError as err:
        logger.error("demo: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(started=STARTED))
