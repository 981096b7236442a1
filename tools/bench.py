"""Benchmarks: training speed of the reference workloads, and caption score versus training time.

    python3 tools/bench.py                                  # every workload: full size on CUDA, --size cpu on a CPU
    python3 tools/bench.py --size cpu --workloads imagen_base64,nuwa_10x128 --steps 5
    python3 tools/bench.py --compare /other/venv/bin/python # the same workloads in both environments, ratios
    python3 tools/bench.py --quality --minutes 3            # caption score vs training time of each demo model
    python3 tools/bench.py --quality --compare /other/venv/bin/python --steps 2000   # video-diffusion side by side

Speed: each workload is one training step (forward, backward, AdamW) in bf16 autocast on CUDA, fp32 on the CPU,
timed over `--steps` steps after `--warmup`; reported as the median ms/step, samples/s, peak memory (CUDA:
`max_memory_allocated`; CPU: growth of the peak resident set size over the process's size before the first
step), achieved TFLOP/s and, where the package's README has a sampler, the latency of one sampling call. Every
workload runs in its own subprocess (clean peak memory, and the way `--compare` runs another environment).

FLOPs of one step are counted by `torch.utils.flop_counter.FlopCounterMode` while the first step runs, two ways:
hardware FLOPs (`flops_per_step`: every matmul, convolution and attention the step executes, including forwards
that reversible layers or checkpointing run again in backward, and the attention scores that fused attention
kernels recompute in backward) and model FLOPs (`model_flops_per_step`: the same step without any recomputation,
i.e. forward + backward of the math, the figure behind "6 N" estimates). The CPU fused attention kernel has no
formula in torch; this script registers one (see `register_attention_flop_formulas`).

The workloads are built with the seed READMEs' public APIs only (constructor keywords, `loss = model(...)`,
`model.sample(...)`), so this script runs in an environment with the published packages of the same names instead
of ours: that is what `--compare PYTHON` does, alternating between the two environments. Where the published
package spells a keyword differently or lacks one, the workload adapts the call site (found by inspecting the
signature, never by version) and lists each adaptation in the result's `adaptations`; the model FLOPs of both
sides say whether the two rows do the same work. (`make_a_video_16x64` uses `SpaceTimeUnet`, which the
make-a-video seed README does not show.) The published imagen and phenaki read the T5 config from the Hugging
Face cache when imported or built: `--compare` gives every worker a cache holding only that config (see
`write_t5_config_cache`), unless HF_HOME is set.

Quality (`--quality`, this repository's environment only): trains each demo model (`tools/demo.py`, its default
settings) for `--minutes` on the built-in shapes dataset and measures the caption score at a few points of the
budget, so models can be compared by what they learn per unit of training time.

Quality side by side (`--quality --compare PYTHON`): trains the same `Unet3D` + `GaussianDiffusion` in both
environments on exactly the same batches (shapes videos and their one-hot (colour, shape, direction) vectors,
generated once into a file that both read), with the same steps, batch, sizes and optimizer, samples both with
full DDPM from the same conditioning vectors, and scores the samples of both with `CaptionScorer` here.

Results go to `--out` (default `benchmarks/results/<date>-<machine>[-quality|-compare|-quality-compare].json`) with
the machine, torch version, date and the command line; a markdown table is printed for `benchmarks/README.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import inspect
import json
import logging
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARKER = "BENCH_RESULT "
SIZES = ("full", "cpu", "tiny")
# two rows do the same work when their model FLOPs differ by at most this fraction: their speed ratio compares
# implementations of one computation rather than different computations
SAME_WORK_TOLERANCE = 0.05

logger = logging.getLogger("bench")


# ----------------------------------------------------------------------------------------------------------------
# workloads (README APIs only; torch and the packages are imported inside, so --help and the parent stay light)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """One training step and, optionally, one sampling call of a reference workload at a given size."""

    model: object  # the nn.Module whose parameters AdamW trains
    loss: Callable[[], object]  # computes the training loss of one batch
    batch_size: int
    description: str
    sample: Callable[[], object] | None = None
    sample_description: str = "no sampler in the README API"
    extra: dict = field(default_factory=dict)
    # call-site differences this environment's package needed (empty where the README API was enough)
    adaptations: list[str] = field(default_factory=list)


def _pick(size: str, full, cpu, tiny):
    return {"full": full, "cpu": cpu, "tiny": tiny}[size]


def _accepts(function: Callable, keyword: str) -> bool:
    """Whether `function` (a class: its constructor) names `keyword` in its signature: how a workload tells the
    published package's spelling from ours without looking at version numbers. A bare `**kwargs` does not count:
    the published packages' decorators hide the real signature behind one."""
    return keyword in inspect.signature(function).parameters


def imagen_base64(size: str, device):
    import torch

    from imagen_pytorch import Imagen, Unet

    s = _pick(
        size,
        full=dict(
            dim=128,
            cond_dim=512,
            mults=(1, 2, 3, 4),
            blocks=3,
            image=64,
            batch=32,
            tokens=64,
            sample_batch=8,
            sample_steps=25,
        ),
        cpu=dict(
            dim=32,
            cond_dim=128,
            mults=(1, 2, 3, 4),
            blocks=1,
            image=32,
            batch=4,
            tokens=16,
            sample_batch=2,
            sample_steps=4,
        ),
        tiny=dict(
            dim=8, cond_dim=16, mults=(1, 2), blocks=1, image=16, batch=2, tokens=4, sample_batch=1, sample_steps=2
        ),
    )
    attns = tuple(level > 0 for level in range(len(s["mults"])))  # attention on every level but the first
    unet = Unet(
        dim=s["dim"],
        cond_dim=s["cond_dim"],
        dim_mults=s["mults"],
        num_resnet_blocks=s["blocks"],
        layer_attns=attns,
        layer_cross_attns=attns,
    )
    imagen = Imagen(unets=(unet,), image_sizes=(s["image"],), timesteps=1000, cond_drop_prob=0.1).to(device)
    images = torch.rand(s["batch"], 3, s["image"], s["image"], device=device)
    text_embeds = torch.randn(s["batch"], s["tokens"], 768, device=device)
    # sampling: the same U-Net in a cascade whose `timesteps` is the number of sampling steps
    sampler = Imagen(unets=(unet,), image_sizes=(s["image"],), timesteps=s["sample_steps"], cond_drop_prob=0.1).to(
        device
    )
    sample_embeds = text_embeds[: s["sample_batch"]]
    return Workload(
        model=imagen,
        loss=lambda: imagen(images, text_embeds=text_embeds, unet_number=1),
        batch_size=s["batch"],
        description=f"Unet(dim={s['dim']}, dim_mults={s['mults']}, num_resnet_blocks={s['blocks']}), "
        f"{s['image']}x{s['image']}, batch {s['batch']}, {s['tokens']} text tokens x 768",
        sample=lambda: sampler.sample(text_embeds=sample_embeds, cond_scale=3.0),
        sample_description=f"{s['sample_batch']} images, {s['sample_steps']} steps, cond_scale 3",
    )


def video_diffusion_16x64(size: str, device):
    import torch

    from video_diffusion_pytorch import GaussianDiffusion, Unet3D

    s = _pick(
        size,
        full=dict(dim=64, mults=(1, 2, 4, 8), image=64, frames=16, batch=4, sample_steps=25),
        cpu=dict(dim=16, mults=(1, 2, 4, 8), image=32, frames=4, batch=1, sample_steps=4),
        tiny=dict(dim=8, mults=(1, 2), image=8, frames=2, batch=1, sample_steps=2),
    )
    unet = Unet3D(dim=s["dim"], dim_mults=s["mults"])
    diffusion = GaussianDiffusion(
        unet, image_size=s["image"], num_frames=s["frames"], timesteps=1000, loss_type="l1"
    ).to(device)
    sampler = GaussianDiffusion(
        unet, image_size=s["image"], num_frames=s["frames"], timesteps=s["sample_steps"], loss_type="l1"
    ).to(device)
    videos = torch.rand(s["batch"], 3, s["frames"], s["image"], s["image"], device=device)
    return Workload(
        model=diffusion,
        loss=lambda: diffusion(videos),
        batch_size=s["batch"],
        description=f"Unet3D(dim={s['dim']}, dim_mults={s['mults']}), {s['frames']} frames of "
        f"{s['image']}x{s['image']}, batch {s['batch']}",
        sample=lambda: sampler.sample(batch_size=1),
        sample_description=f"1 video, {s['sample_steps']} steps",
    )


def make_a_video_16x64(size: str, device):
    import torch
    import torch.nn.functional as F

    from make_a_video_pytorch import SpaceTimeUnet

    s = _pick(
        size,
        full=dict(dim=64, mults=(1, 2, 4, 8), image=64, frames=16, batch=4, depth=2),
        cpu=dict(dim=16, mults=(1, 2, 4, 8), image=32, frames=8, batch=1, depth=2),
        tiny=dict(dim=8, mults=(1, 2), image=8, frames=2, batch=1, depth=1),
    )
    levels = len(s["mults"])
    adaptations = []
    # ours spells it dim_mults like the other U-Nets; the published 0.4.0 SpaceTimeUnet takes dim_mult
    mults_keyword = "dim_mults" if _accepts(SpaceTimeUnet, "dim_mults") else "dim_mult"
    if mults_keyword != "dim_mults":
        adaptations.append(f"SpaceTimeUnet({mults_keyword}=...) instead of dim_mults=")
    # every per-level setting is given in full: the published constructor wants one entry per level for each
    unet = SpaceTimeUnet(
        dim=s["dim"],
        **{mults_keyword: s["mults"]},
        self_attns=tuple(level == levels - 1 for level in range(levels)),
        temporal_compression=tuple(level > 0 for level in range(levels)),
        resnet_block_depths=(s["depth"],) * levels,
    ).to(device)
    videos = torch.randn(s["batch"], 3, s["frames"], s["image"], s["image"], device=device)
    noise = torch.randn_like(videos)
    times = torch.rand(s["batch"], device=device)

    def loss():
        return F.mse_loss(unet(videos + noise, timestep=times), noise)

    return Workload(
        model=unet,
        loss=loss,
        batch_size=s["batch"],
        description=f"SpaceTimeUnet(dim={s['dim']}, dim_mults={s['mults']}, {s['depth']} resnet blocks per level, "
        f"attention at the last level, temporal compression below the first), {s['frames']} frames of "
        f"{s['image']}x{s['image']}, batch {s['batch']}",
        adaptations=adaptations,
    )


def _cvivit_settings(size: str) -> dict:
    return _pick(
        size,
        full=dict(dim=512, codebook=5000, image=128, patch=16, depth=4, heads=8, dim_head=64, frames=17),
        cpu=dict(dim=64, codebook=512, image=64, patch=16, depth=1, heads=2, dim_head=32, frames=9),
        tiny=dict(dim=16, codebook=64, image=16, patch=8, depth=1, heads=2, dim_head=8, frames=3),
    )


def _cvivit(s: dict):
    from phenaki_pytorch import CViViT

    return CViViT(
        dim=s["dim"],
        codebook_size=s["codebook"],
        image_size=s["image"],
        patch_size=s["patch"],
        temporal_patch_size=2,
        spatial_depth=s["depth"],
        temporal_depth=s["depth"],
        dim_head=s["dim_head"],
        heads=s["heads"],
        use_vgg_and_gan=False,
    )


def phenaki_cvivit_17x128(size: str, device):
    import torch

    s = {**_cvivit_settings(size), "batch": _pick(size, 4, 1, 1)}
    s["frames"] = _pick(size, 17, 5, 3)
    cvivit = _cvivit(s).to(device)
    videos = torch.rand(s["batch"], 3, s["frames"], s["image"], s["image"], device=device)
    return Workload(
        model=cvivit,
        loss=lambda: cvivit(videos),
        batch_size=s["batch"],
        description=f"CViViT(dim={s['dim']}, patch {s['patch']}, depths {s['depth']}, no GAN), {s['frames']} frames "
        f"of {s['image']}x{s['image']}, batch {s['batch']}",
        sample_description="a tokenizer: nothing to sample",
    )


def phenaki_maskgit_576tok(size: str, device):
    import torch

    from phenaki_pytorch import MaskGit, Phenaki

    cv = _cvivit_settings(size)
    s = _pick(
        size,
        full=dict(dim=512, depth=6, context=768, text=32, batch=8),
        cpu=dict(dim=64, depth=2, context=768, text=8, batch=2),
        tiny=dict(dim=16, depth=1, context=768, text=4, batch=1),
    )
    side = cv["image"] // cv["patch"]
    token_frames = 1 + (cv["frames"] - 1) // 2
    seq_len = side * side * token_frames
    maskgit = MaskGit(
        num_tokens=cv["codebook"], max_seq_len=seq_len, dim=s["dim"], dim_context=s["context"], depth=s["depth"]
    )
    phenaki = Phenaki(cvivit=_cvivit(cv), maskgit=maskgit).to(device)
    # token ids shaped (batch, frames, height, width): both packages take that layout, and it is how the published
    # MaskGit learns the video's patch shape (it refuses flat (batch, seq) ids without one)
    ids = torch.randint(0, cv["codebook"], (s["batch"], token_frames, side, side), device=device)
    text_embeds = torch.randn(s["batch"], s["text"], s["context"], device=device)
    adaptations = []
    if _accepts(phenaki.sample, "text_embeds"):

        def sample():
            return phenaki.sample(text_embeds=text_embeds[:1], num_frames=cv["frames"], cond_scale=3.0)
    else:
        # the published Phenaki.sample takes only `texts`, which it encodes with its T5 (weights we cannot load
        # offline); its text encoder is replaced by one that returns the same embeddings ours is given
        adaptations.append(
            "Phenaki.sample has no text_embeds keyword: sample(texts=['']) with encode_texts "
            "returning the same precomputed text embeddings"
        )
        phenaki.encode_texts = lambda texts, output_device=None: text_embeds[: len(texts)].to(output_device or device)

        def sample():
            return phenaki.sample(texts=[""], num_frames=cv["frames"], cond_scale=3.0)

    return Workload(
        model=phenaki,
        loss=lambda: phenaki(video_codebook_ids=ids, text_embeds=text_embeds),
        batch_size=s["batch"],
        description=f"MaskGit(dim={s['dim']}, depth={s['depth']}), {seq_len} video tokens, {s['text']} text tokens "
        f"x {s['context']}, batch {s['batch']}",
        sample=sample,
        sample_description=f"1 video of {cv['frames']} frames (MaskGIT steps and C-ViViT decode)",
        adaptations=adaptations,
    )


def nuwa_10x128(size: str, device):
    import torch

    from nuwa_pytorch import NUWA, VQGanVAE

    s = _pick(
        size,
        full=dict(vae_dim=64, image=128, layers=3, dim=512, enc=6, dec=12, frames=10, batch=2, text=64),
        cpu=dict(vae_dim=16, image=32, layers=2, dim=64, enc=1, dec=2, frames=4, batch=1, text=16),
        tiny=dict(vae_dim=16, image=16, layers=2, dim=16, enc=1, dec=1, frames=2, batch=1, text=4),
    )
    # the VAE is frozen inside NUWA: its GAN discriminator and VGG perceptual loss (which the published package
    # downloads when built) are for training the VAE and play no part in NUWA's step. vae_dim stays a multiple of
    # the default 16 GroupNorm groups, which the published VAE requires.
    vae = VQGanVAE(dim=s["vae_dim"], image_size=s["image"], num_layers=s["layers"], use_vgg_and_gan=False)
    # the image size comes from the VAE (the published NUWA refuses both at once)
    nuwa = NUWA(
        vae=vae,
        dim=s["dim"],
        text_num_tokens=20000,
        text_enc_depth=s["enc"],
        text_enc_heads=8,
        text_max_seq_len=s["text"],
        max_video_frames=s["frames"],
        dec_depth=s["dec"],
        dec_heads=8,
        dec_reversible=True,
        enc_reversible=True,
        sparse_3dna_kernel_size=3,
        sparse_3dna_dilation=(1, 2, 4),
        shift_video_tokens=True,
    ).to(device)
    text = torch.randint(1, 20000, (s["batch"], s["text"]), device=device)
    videos = torch.rand(s["batch"], s["frames"], 3, s["image"], s["image"], device=device)
    tokens = s["image"] // 2 ** s["layers"]
    return Workload(
        model=nuwa,
        loss=lambda: nuwa(text=text, video=videos, return_loss=True),
        batch_size=s["batch"],
        description=f"VQGanVAE(dim={s['vae_dim']}, image_size={s['image']}, num_layers={s['layers']}, no GAN/VGG), "
        f"NUWA(dim={s['dim']}, text_enc_depth={s['enc']}, dec_depth={s['dec']}, reversible), "
        f"{s['frames']} frames of {tokens}x{tokens} tokens, batch {s['batch']}, {s['text']} text tokens",
        sample_description="autoregressive generation is not timed",
    )


WORKLOADS: dict[str, Callable] = {
    "imagen_base64": imagen_base64,
    "video_diffusion_16x64": video_diffusion_16x64,
    "make_a_video_16x64": make_a_video_16x64,
    "phenaki_cvivit_17x128": phenaki_cvivit_17x128,
    "phenaki_maskgit_576tok": phenaki_maskgit_576tok,
    "nuwa_10x128": nuwa_10x128,
}
PACKAGE_OF = {
    "imagen_base64": "imagen-pytorch",
    "video_diffusion_16x64": "video-diffusion-pytorch",
    "make_a_video_16x64": "make-a-video-pytorch",
    "phenaki_cvivit_17x128": "phenaki-pytorch",
    "phenaki_maskgit_576tok": "phenaki-pytorch",
    "nuwa_10x128": "nuwa-pytorch",
}


# ----------------------------------------------------------------------------------------------------------------
# counting FLOPs
# ----------------------------------------------------------------------------------------------------------------

# torch counts the CUDA fused attention kernels but has no formula for the CPU one, so attention done through
# F.scaled_dot_product_attention on a CPU counted nothing (the "math" fallback decomposes into counted bmm calls)
CPU_ATTENTION_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention_for_cpu_backward",
)
# fused attention backward kernels, whose first matmul recomputes the scores QK^T that the forward did not keep
ATTENTION_BACKWARD_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_flash_attention_backward",
    "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_cudnn_attention_backward",
)
RECOMPUTE_SCOPE = "recomputed forward"


def _attention_matmul_flops(query_shape, key_shape, value_shape) -> tuple[int, int]:
    """FLOPs of the two matmuls of one attention call, `(scores QK^T, values PV)`; shapes `(..., heads, len, dim)`
    (the query's heads count: grouped key/value heads are broadcast to them)."""
    *batch, heads, query_len, head_dim = query_shape
    pairs = math.prod(batch) * heads * query_len * key_shape[-2]
    return 2 * pairs * head_dim, 2 * pairs * value_shape[-1]


def attention_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Fused attention forward: scores QK^T, then PV."""
    scores, values = _attention_matmul_flops(query_shape, key_shape, value_shape)
    return scores + values


def attention_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """Fused attention backward as the kernel runs it (the convention of torch's CUDA formulas): the scores QK^T
    again (the forward kept only the log-sum-exp), dP = dO V^T, dV = P^T dO, dQ = dS K and dK = dS^T Q."""
    scores, values = _attention_matmul_flops(query_shape, key_shape, value_shape)
    return scores + 2 * values + 2 * scores


def register_attention_flop_formulas() -> None:
    """Registers the CPU fused attention formulas with FlopCounterMode's registry, once per process, and only
    where torch has none of its own (a later torch that counts these ops keeps its formulas)."""
    import torch
    from torch.utils import flop_counter

    formulas = dict(zip(CPU_ATTENTION_OPS, (attention_forward_flops, attention_backward_flops), strict=True))
    for name, formula in formulas.items():
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


class _Scopes:
    """Stands in for FlopCounterMode's ModuleTracker, which FlopCounterMode asks for the scopes (`parents`) each
    op's FLOPs are added to. The tracker's module hooks fail inside autograd Functions that run modules (NUWA's
    reversible layers), and only totals are needed here: every op goes to "Global", and an op that runs with
    gradients enabled while backward is running goes to RECOMPUTE_SCOPE as well. That is a forward run again to
    rebuild activations (reversible layers, checkpointing): the autograd engine runs the gradient ops themselves
    with gradients disabled."""

    def __init__(self, counter: TrainingStepFlops):
        self.counter = counter

    @property
    def parents(self) -> set[str]:
        import torch

        if self.counter.in_backward and torch.is_grad_enabled():
            return {"Global", RECOMPUTE_SCOPE}
        return {"Global"}

    def __enter__(self) -> _Scopes:
        return self

    def __exit__(self, *exc) -> None:
        return None


class TrainingStepFlops:
    """FLOPs of one training step (forward, then backward), counted by `FlopCounterMode` while it runs:

        with TrainingStepFlops() as flops:
            loss = model(batch)
            flops.start_backward()
            loss.backward()
        flops.result()  # {"flops_per_step": ..., "model_flops_per_step": ..., ...}

    Hardware FLOPs (`flops_per_step`) are what the step executes: matmuls, convolutions and attention, including
    forwards that reversible layers or checkpointing run again in backward and the scores that fused attention
    backward kernels recompute. Model FLOPs (`model_flops_per_step`) leave those recomputations out: forward plus
    the backward of the math, so they are the same for two implementations of the same model however they trade
    memory for compute, and their ratio says whether two rows do the same work. Elementwise work (norms,
    activations, softmax, the optimizer) is not counted by either.
    """

    def __init__(self):
        import torch
        from torch.utils.flop_counter import FlopCounterMode, flop_registry

        register_attention_flop_formulas()
        self.in_backward = False
        self.forward_flops = 0
        self.attention_rescoring = 0
        mapping = {}
        for name in ATTENTION_BACKWARD_OPS:
            op = getattr(torch.ops.aten, name, None)
            if op is not None and op in flop_registry:
                mapping[op] = self._recording_rescoring(flop_registry[op])
        self.mode = FlopCounterMode(display=False, custom_mapping=mapping)
        self.mode.mod_tracker = _Scopes(self)

    def _recording_rescoring(self, formula: Callable) -> Callable:
        """The registered formula of a fused attention backward op, also noting its recomputed scores."""

        def counted(grad_out, query, key, value, *args, **kwargs):
            self.attention_rescoring += _attention_matmul_flops(query.shape, key.shape, value.shape)[0]
            return formula(grad_out, query, key, value, *args, **kwargs)

        counted._get_raw = True  # FlopCounterMode passes the tensors as they are (the formula takes them so)
        return counted

    def __enter__(self) -> TrainingStepFlops:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def total(self, scope: str = "Global") -> int:
        return sum(self.mode.get_flop_counts().get(scope, {}).values())

    def start_backward(self) -> None:
        self.forward_flops = self.total()
        self.in_backward = True

    def result(self) -> dict:
        hardware, recomputed = self.total(), self.total(RECOMPUTE_SCOPE)
        return {
            "flops_per_step": hardware,
            "model_flops_per_step": hardware - recomputed - self.attention_rescoring,
            "flops_forward": self.forward_flops,
            "flops_recomputed_forward": recomputed,
            "flops_attention_rescoring": self.attention_rescoring,
            # where the FLOPs are: shows what differs when two implementations' counts do
            "flops_by_op": {
                str(op).removeprefix("aten."): count
                for op, count in sorted(
                    self.mode.get_flop_counts().get("Global", {}).items(), key=lambda item: -item[1]
                )
            },
        }


# ----------------------------------------------------------------------------------------------------------------
# measuring one workload (runs inside the worker process)
# ----------------------------------------------------------------------------------------------------------------


def _current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: fall back to the peak so far
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def measure(
    name: str, size: str, device_name: str, steps: int, warmup: int, sample: bool = True, seed: int = 0
) -> dict:
    """Builds workload `name` and times its training step (and its sampler); returns the result record."""
    import torch

    torch.manual_seed(seed)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    workload = WORKLOADS[name](size, device)
    model = workload.model
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    # counted now: the published Imagen moves its U-Nets out of its ModuleList on the first call, after which
    # model.parameters() is empty
    parameter_count = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def train_step():
        with autocast:
            loss = workload.loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    rss_before = _current_rss_mb()
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)

    # the first step doubles as the FLOP count (forward + backward; the optimizer's elementwise work is not counted)
    with TrainingStepFlops() as counter:
        with autocast:
            loss = workload.loss()
        counter.start_backward()
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.result()

    for _ in range(max(warmup - 1, 0)):
        train_step()
    sync()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        train_step()
        sync()
        times.append(time.perf_counter() - started)
    median = statistics.median(times)

    if cuda:
        peak_mb, memory_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    else:
        peak_mb, memory_kind = max(_peak_rss_mb() - rss_before, 0.0), "peak RSS growth"

    sample_ms = None
    if sample and workload.sample is not None:
        model.eval()
        runs = 3 if cuda else 1
        with torch.no_grad(), autocast:
            if cuda:
                workload.sample()  # warm-up (kernels, cudnn autotuning)
            sync()
            latencies = []
            for _ in range(runs):
                started = time.perf_counter()
                workload.sample()
                sync()
                latencies.append(time.perf_counter() - started)
        sample_ms = statistics.median(latencies) * 1e3

    package = PACKAGE_OF[name]
    return {
        "workload": name,
        "size": size,
        "description": workload.description,
        "device": device_name,
        "precision": "bf16 autocast" if cuda else "fp32",
        "batch_size": workload.batch_size,
        "parameters": parameter_count,
        "steps": steps,
        "ms_per_step": median * 1e3,
        "ms_per_step_all": [t * 1e3 for t in times],
        "samples_per_s": workload.batch_size / median,
        "peak_memory_mb": peak_mb,
        "memory_kind": memory_kind,
        **flops,
        "flops_method": "FlopCounterMode over forward + backward (hardware: as executed; model: no recomputation)",
        "tflops": flops["flops_per_step"] / median / 1e12,
        "model_tflops": flops["model_flops_per_step"] / median / 1e12,
        "sample_ms": sample_ms,
        "sample": workload.sample_description if workload.sample is not None else None,
        "package": package,
        "package_version": _version(package),
        "package_path": str(Path(sys.modules[_module_of(package)].__file__).parent),
        "python": sys.executable,
        "torch": torch.__version__,
        "load_average": _load_average(),
        "threads": torch.get_num_threads(),
        "adaptations": workload.adaptations,
    }


def _module_of(distribution: str) -> str:
    return distribution.replace("-", "_")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------------------------------------------
# running workloads in worker processes, comparing environments
# ----------------------------------------------------------------------------------------------------------------

# a minimal T5 config: the published imagen and phenaki read only d_model from it (the text embedding width), at
# import or construction, and neither loads weights when given precomputed text embeddings
T5_NAME = "google/t5-v1_1-base"
T5_CONFIG = {
    "model_type": "t5",
    "architectures": ["T5ForConditionalGeneration"],
    "d_model": 768,
    "d_ff": 2048,
    "d_kv": 64,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "feed_forward_proj": "gated-gelu",
    "vocab_size": 32128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "is_encoder_decoder": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
    "tie_word_embeddings": False,
}


def write_t5_config_cache(hf_home: Path) -> Path:
    """Writes a Hugging Face cache under `hf_home` (use it as HF_HOME, with HF_HUB_OFFLINE=1) that holds only the
    config of T5_NAME, laid out as the hub client stores downloads; returns the config's path. Idempotent."""
    text = json.dumps(T5_CONFIG, indent=2, sort_keys=True) + "\n"
    revision = hashlib.sha1(text.encode()).hexdigest()  # any 40-hex name works; this one changes with the content
    repo = hf_home / "hub" / ("models--" + T5_NAME.replace("/", "--"))
    config = repo / "snapshots" / revision / "config.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return config


def worker_environment() -> dict:
    """The environment of every worker process: offline, and a Hugging Face cache with the T5 config (bench's own
    folder in the temp directory, unless HF_HOME is set; a real cache is never written to)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if "HF_HOME" not in env:
        hf_home = Path(tempfile.gettempdir()) / "bench-hf-home"
        write_t5_config_cache(hf_home)
        env["HF_HOME"] = str(hf_home)
    return env


class WorkerProcess:
    """This script run with `--worker`/`--quality-worker` by another (or this) interpreter. Its output goes to files,
    not pipes, so that two workers can run at once without one blocking on a full pipe while the other is read."""

    def __init__(self, python: str, worker_args: Sequence[str], fallback: dict):
        self.python, self.fallback = python, fallback
        self.logs = tempfile.TemporaryDirectory(prefix="bench-worker-")
        self.stdout_path, self.stderr_path = Path(self.logs.name) / "stdout", Path(self.logs.name) / "stderr"
        self.started = time.monotonic()
        with self.stdout_path.open("w") as stdout, self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [python, str(Path(__file__).resolve()), *worker_args],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=worker_environment(),
            )

    def result(self, timeout: float | None) -> dict:
        """Waits for the worker and returns its record, or the fallback fields with an `error`."""
        try:
            self.process.wait(timeout=timeout)
            error = None
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            error = f"timed out after {timeout:.0f} s"
        stdout, stderr = self.stdout_path.read_text(), self.stderr_path.read_text()
        self.logs.cleanup()
        for line in stdout.splitlines():
            if line.startswith(RESULT_MARKER) and error is None:
                return json.loads(line[len(RESULT_MARKER) :])
        tail = [line for line in (stderr or stdout).strip().splitlines() if line.strip()][-6:]
        return {
            **self.fallback,
            "python": self.python,
            "error": error or " | ".join(tail) or f"exit code {self.process.returncode}",
            "seconds": round(time.monotonic() - self.started, 1),
        }


def run_worker(python: str, name: str, args: argparse.Namespace) -> dict:
    """Runs one workload in a fresh `python` process (this script with --worker) and returns its record."""
    command = [
        "--worker",
        name,
        "--size",
        args.size,
        "--device",
        args.device,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    if args.no_sample:
        command.append("--no-sample")
    worker = WorkerProcess(python, command, {"workload": name, "size": args.size, "device": args.device})
    return worker.result(args.timeout)


def measure_safely(name: str, args: argparse.Namespace) -> dict:
    """In-process measurement (`--no-isolate`): an error is recorded instead of stopping the other workloads."""
    try:
        return measure(name, args.size, args.device, args.steps, args.warmup, sample=not args.no_sample)
    except Exception as err:  # noqa: BLE001 - a broken workload must not hide the others' results
        return {
            "workload": name,
            "size": args.size,
            "device": args.device,
            "python": sys.executable,
            "error": f"{type(err).__name__}: {err}",
        }


def compare_records(ours: list[dict], theirs: list[dict]) -> dict:
    """Medians over the alternating repeats, the ratios ours : theirs, and whether both do the same work."""

    def median_of(records, key):
        values = [r[key] for r in records if r.get(key) is not None and "error" not in r]
        return statistics.median(values) if values else None

    summary = {}
    for key in (
        "ms_per_step",
        "peak_memory_mb",
        "tflops",
        "model_tflops",
        "sample_ms",
        "flops_per_step",
        "model_flops_per_step",
    ):
        a, b = median_of(ours, key), median_of(theirs, key)
        summary[key] = {"ours": a, "theirs": b, "ratio": (a / b) if a is not None and b else None}
    ms = summary["ms_per_step"]
    summary["speedup"] = (ms["theirs"] / ms["ours"]) if ms["ours"] and ms["theirs"] else None
    # the FLOPs counts are deterministic, so any repeat's will do; model FLOPs, so that recomputation (reversible
    # layers, checkpointing, fused attention) is a speed trade-off and not a difference in work
    flops_ratio = summary["model_flops_per_step"]["ratio"]
    summary["flops_ratio"] = flops_ratio
    summary["same_work"] = None if flops_ratio is None else abs(flops_ratio - 1) <= SAME_WORK_TOLERANCE
    summary["adaptations"] = {
        "ours": sorted({a for r in ours for a in r.get("adaptations", [])}),
        "theirs": sorted({a for r in theirs for a in r.get("adaptations", [])}),
    }
    summary["errors"] = [r["error"] for r in ours + theirs if "error" in r]
    return summary


# ----------------------------------------------------------------------------------------------------------------
# quality: caption score versus training time of the demo models
# ----------------------------------------------------------------------------------------------------------------


def quality(
    models: Sequence[str],
    minutes: float,
    device_name: str,
    points: Sequence[float],
    eval_samples: int,
    seed: int = 0,
    smoke: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    overrides: dict | None = None,
    samples_dir: Path | None = None,
) -> list[dict]:
    """Trains each demo model for `minutes` (its demo settings, or at most `max_steps` steps) and scores
    `eval_samples` samples at each fraction of the budget in `points`. Sampling time is not training time."""
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    import demo

    from synthesis_core.shapes import CaptionScorer

    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(demo.pick_threads())
    scorer = CaptionScorer()
    results = []
    for model_name in models:
        record: dict = {"model": model_name, "minutes": minutes, "device": device_name, "curve": []}
        try:
            config = demo.make_config(model_name, smoke=smoke, max_steps=max_steps, **(overrides or {}))
            torch.manual_seed(seed)
            model = demo.build_model(model_name, config, device=device)
            budget = minutes * 60
            trainer = demo.DemoTrainer(model, config, budget=budget, device=device, seed=seed)
            prompts = demo.demo_prompts(eval_samples)
            record["config"] = config.__dict__
            for point in points:
                trainer.run(until=point, progress_bar=progress)
                started = time.monotonic()
                videos = demo.generate(model, prompts, config.sample_batch_size, device, seed)
                score = scorer.score(videos, prompts)
                if samples_dir is not None:
                    shown = min(12, len(prompts))
                    samples_dir.mkdir(parents=True, exist_ok=True)
                    demo.labelled_sheet(
                        demo.upscale(videos[:shown]),
                        prompts[:shown],
                        samples_dir / f"{model_name}-{trainer.steps:05d}-steps.png",
                    )
                record["curve"].append(
                    {
                        "fraction": point,
                        "train_seconds": round(trainer.train_seconds, 1),
                        "train_cpu_seconds": round(trainer.train_cpu_seconds, 1),
                        "steps": trainer.steps,
                        "loss": trainer.recent_loss(),
                        "sample_seconds": round(time.monotonic() - started, 1),
                        "load_average": _load_average(),
                        "threads": torch.get_num_threads(),
                        **{key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in score.items()},
                    }
                )
            # counted once sampled: a two-stage model builds its generator on the trained tokenizer
            record["parameters"] = sum(p.numel() for p in model.parameters())
        except Exception as err:  # noqa: BLE001 - one broken model must not hide the others
            record["error"] = f"{type(err).__name__}: {err}"
        results.append(record)
    return results


# ----------------------------------------------------------------------------------------------------------------
# quality side by side: the same video-diffusion training in two environments, scored here
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class QualityCompareConfig:
    """What both environments train and sample: the README's `Unet3D` + `GaussianDiffusion`, conditioned on an exact
    one-hot (colour, shape, direction) vector instead of a caption embedding, so the comparison measures the
    diffusion model and not a text encoder."""

    steps: int = 2000
    batch_size: int = 8
    image_size: int = 16
    num_frames: int = 8
    dim: int = 16
    dim_mults: tuple[int, ...] = (1, 2)
    timesteps: int = 250  # also the number of sampling steps: the published sampler runs every timestep
    loss_type: str = "l2"
    lr: float = 1e-3  # Adam, as tools/demo.py trains (no weight decay, gradients clipped)
    max_grad_norm: float = 1.0
    # the demo's recipe, on both sides: the first 40% of the steps draw only the noisiest tenth of the timesteps,
    # where only the condition can say where each frame's content goes (through the published `p_losses(x, t)`)
    high_noise_warmup: float = 0.4
    warmup_from: float = 0.9
    # what each side predicts: the published 0.7.0 only predicts the noise; where the package takes `objective`
    # (ours) it predicts v, whose loss weighs the clean video at high noise, where the warm-up trains
    objective: str = "v"
    eval_samples: int = 48  # every caption of the dataset once per 48
    seed: int = 0
    threads: int = 1
    device: str = "cpu"


def caption_vector(caption: str) -> list[float]:
    """`"a red circle moving left"` -> the one-hot of its colour, shape and direction (4 + 3 + 4 values)."""
    from synthesis_core.shapes import COLORS, DIRECTIONS, SHAPES, caption_attributes

    wanted = caption_attributes(caption)
    return (
        [float(wanted["color"] == c) for c in COLORS]
        + [float(wanted["shape"] == s) for s in SHAPES]
        + [float(wanted["direction"] == d) for d in DIRECTIONS]
    )


def eval_captions(count: int) -> list[str]:
    """`count` prompts cycling through every caption of the dataset in its fixed order."""
    from synthesis_core.shapes import all_captions

    captions = all_captions()
    return [captions[index % len(captions)] for index in range(count)]


def write_training_data(path: Path, config: QualityCompareConfig) -> dict:
    """Draws `steps * batch_size` videos of the shapes dataset (batch i is items i*b .. i*b+b-1) with their one-hot
    vectors, and the vectors of the evaluation prompts, into one file that both environments read, so both train
    on exactly the same batches. Videos are stored losslessly as indices into the dataset's palette (background and
    the four colours: every pixel is one of them), a quarter of the size of uint8 RGB."""
    import torch

    from synthesis_core.shapes import BACKGROUND, COLORS, ShapesVideoDataset

    count = config.steps * config.batch_size
    dataset = ShapesVideoDataset(count, image_size=config.image_size, num_frames=config.num_frames, seed=config.seed)
    palette = torch.tensor([BACKGROUND, *COLORS.values()])
    indices = torch.empty(count, config.num_frames, config.image_size, config.image_size, dtype=torch.uint8)
    cond = torch.empty(count, 11)
    for index in range(count):
        video, caption = dataset[index]
        pixels = video.permute(1, 2, 3, 0)  # (t, h, w, 3)
        nearest = (pixels.unsqueeze(-2) - palette).abs().sum(-1).argmin(-1)
        if not torch.equal(palette[nearest], pixels):
            raise ValueError(
                f"ShapesVideoDataset item {index} has colours outside the palette {palette.tolist()}: "
                "its videos cannot be stored as palette indices"
            )
        indices[index] = nearest.to(torch.uint8)
        cond[index] = torch.tensor(caption_vector(caption))
    prompts = eval_captions(config.eval_samples)
    torch.save(
        {
            "config": {**config.__dict__, "dim_mults": list(config.dim_mults)},
            "palette": palette,
            "indices": indices,
            "cond": cond,
            "eval_cond": torch.tensor([caption_vector(c) for c in prompts]),
        },
        path,
    )
    return {
        "videos": count,
        "eval_prompts": len(prompts),
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "dataset": f"ShapesVideoDataset({count}, image_size={config.image_size}, "
        f"num_frames={config.num_frames}, seed={config.seed})",
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quality_worker(data_path: Path, samples_path: Path) -> dict:
    """Runs in either environment (torch and video_diffusion_pytorch only): trains on the batches of `data_path`,
    samples one video per evaluation vector with full DDPM, writes them to `samples_path`, returns the record.
    Only README calls: `Unet3D(dim, dim_mults, cond_dim)`, `GaussianDiffusion(unet, image_size, num_frames,
    timesteps, loss_type)`, `diffusion(videos, cond=...)`, `diffusion.sample(cond=..., cond_scale=...)`, and the
    published `diffusion.p_losses(x_start, t, cond=...)` for the high-noise warm-up."""
    import torch

    from video_diffusion_pytorch import GaussianDiffusion, Unet3D

    data = torch.load(data_path, weights_only=True)
    c = data["config"]
    torch.set_num_threads(c["threads"])
    torch.manual_seed(c["seed"])
    device = torch.device(c["device"])
    palette, indices, cond = data["palette"].to(device), data["indices"], data["cond"].to(device)
    unet = Unet3D(dim=c["dim"], dim_mults=tuple(c["dim_mults"]), cond_dim=cond.shape[1])
    # the one call-site difference, recorded in the result: a package without `objective` predicts the noise
    takes_objective = "objective" in inspect.signature(GaussianDiffusion.__init__).parameters
    objective = c.get("objective", "eps") if takes_objective else "eps"
    diffusion = GaussianDiffusion(
        unet,
        image_size=c["image_size"],
        num_frames=c["num_frames"],
        timesteps=c["timesteps"],
        loss_type=c["loss_type"],
        **({"objective": objective} if takes_objective else {}),
    ).to(device)
    trainable = [p for p in diffusion.parameters() if p.requires_grad]
    parameter_count = sum(p.numel() for p in trainable)
    optimizer = torch.optim.Adam(trainable, lr=c["lr"])
    batch, window = c["batch_size"], max(c["steps"] // 20, 1)
    warmup_steps = int(c.get("high_noise_warmup", 0.0) * c["steps"])
    warmup_first = int(c.get("warmup_from", 0.0) * c["timesteps"])
    losses, curve = [], []
    load_before = _load_average()
    started, cpu_started = time.monotonic(), time.process_time()
    diffusion.train()
    for step in range(c["steps"]):
        rows = slice(step * batch, (step + 1) * batch)
        videos = palette[indices[rows].to(device).long()].permute(0, 4, 1, 2, 3).contiguous()  # (b, 3, t, h, w)
        # null_cond_prob=0: the condition is never dropped (ours drops 10% by default, the published 0.7.0 none);
        # both samplers then run unguided, the way the published one does with cond_scale=1
        if step < warmup_steps:
            times = torch.randint(warmup_first, c["timesteps"], (videos.shape[0],), device=device)
            loss = diffusion.p_losses(videos * 2 - 1, times, cond=cond[rows], null_cond_prob=0.0)
        else:
            loss = diffusion(videos, cond=cond[rows], null_cond_prob=0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, c["max_grad_norm"])
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % window == 0 or step + 1 == c["steps"]:
            recent = losses[-window:]
            curve.append({"step": step + 1, "loss": sum(recent) / len(recent)})
            logger.info(
                "step %d/%d, loss %.4f, %.0f s", step + 1, c["steps"], curve[-1]["loss"], time.monotonic() - started
            )
    train_seconds, train_cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started

    torch.manual_seed(c["seed"] + 1)
    sample_started = time.monotonic()
    videos = diffusion.sample(cond=data["eval_cond"].to(device), cond_scale=1.0)
    sample_seconds = time.monotonic() - sample_started
    torch.save(videos.float().clamp(0, 1).cpu(), samples_path)
    return {
        "package": "video-diffusion-pytorch",
        "package_version": _version("video-diffusion-pytorch"),
        "package_path": str(Path(sys.modules["video_diffusion_pytorch"].__file__).parent),
        "python": sys.executable,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "data_sha256": _sha256(data_path),
        "parameters": parameter_count,
        "objective": objective,
        "steps": c["steps"],
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "ms_per_step": round(train_seconds / max(c["steps"], 1) * 1e3, 1),
        "final_loss": curve[-1]["loss"] if curve else None,
        "loss_curve": curve,
        "sample_seconds": round(sample_seconds, 1),
        "sample_shape": list(videos.shape),
        "load_average_before": load_before,
        "load_average_after": _load_average(),
    }


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float] | None:
    """95% interval of a success rate from `hits` of `n`: with a few dozen samples a score moves by ten points
    from chance alone, and the interval says how far."""
    if n == 0:
        return None
    rate = hits / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(centre - half, 0.0), 3), round(min(centre + half, 1.0), 3)]


ATTRIBUTES = ("color", "shape", "direction", "all")


def quality_compare(
    python: str, config: QualityCompareConfig, timeout: float | None, data_dir: Path | None = None
) -> dict:
    """Trains and samples in both environments at once (one worker process each, `config.threads` threads each),
    then scores both sample sets with CaptionScorer in this environment."""
    import torch

    from synthesis_core.shapes import CaptionScorer

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        folder = data_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        data_path = folder / "training-data.pt"
        started = time.monotonic()
        data_info = write_training_data(data_path, config)
        data_info["seconds"] = round(time.monotonic() - started, 1)
        logger.info("training data: %s (%.1f MB); training both sides", data_info["dataset"], data_info["bytes"] / 1e6)
        environments = {"ours": sys.executable, "theirs": python}
        workers = {
            side: WorkerProcess(
                executable,
                ["--quality-worker", str(data_path), "--samples-out", str(folder / f"samples-{side}.pt")],
                {"environment": side},
            )
            for side, executable in environments.items()
        }
        records = {side: {"environment": side, **worker.result(timeout)} for side, worker in workers.items()}
        scorer = CaptionScorer()
        prompts = eval_captions(config.eval_samples)
        for side, record in records.items():
            if "error" in record:
                continue
            if record["data_sha256"] != data_info["sha256"]:
                record["error"] = "trained on a different data file than the one written"
                continue
            videos = torch.load(folder / f"samples-{side}.pt", weights_only=True)
            score = scorer.score(videos, prompts)
            record["score"] = {key: score[key] for key in ATTRIBUTES}
            record["score_interval_95"] = {
                key: wilson_interval(round(score[key] * score["n"]), score["n"]) for key in ATTRIBUTES
            }
            record["score_n"] = score["n"]
    ours, theirs = records["ours"], records["theirs"]
    ahead = None
    if "score" in ours and "score" in theirs:
        ahead = {key: ours["score"][key] > theirs["score"][key] for key in ATTRIBUTES}
    return {
        "config": {**config.__dict__, "dim_mults": list(config.dim_mults)},
        "data": data_info,
        "prompts": f"{len(prompts)} prompts cycling through the {len(set(prompts))} captions (eval_captions)",
        "concurrent": True,
        "ours": ours,
        "theirs": theirs,
        "ours_ahead": ahead,
    }


# ----------------------------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    info["load_average"] = _load_average()
    return info


def git_state() -> dict | None:
    """The commit of this checkout and the files changed since: what code "ours" was, since the packages are
    installed editable and others may be changing them while a long run goes on."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "changed": [line[3:] for line in status.stdout.splitlines()]}


def _load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load: times measured on a shared machine only mean something next to it."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_tag(info: dict) -> str:
    name = info.get("gpu") or f"cpu{info['cpu_count']}-{info['cpu']}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def _fmt(value, digits: int = 1, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return f"{value * scale:.{digits}f}"


def speed_table(records: list[dict]) -> str:
    lines = [
        "| workload | size | device | precision | ms/step | samples/s | peak memory (MB) "
        "| GFLOP/step (model) | TFLOP/s | sampling (ms) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['size']} | {r['device']} | - | error: {r['error'][:80]} | | | | | |")
            continue
        lines.append(
            f"| {r['workload']} | {r['size']} | {r['device']} | {r['precision']} | {_fmt(r['ms_per_step'])} "
            f"| {_fmt(r['samples_per_s'], 2)} | {_fmt(r['peak_memory_mb'], 0)} "
            f"| {_fmt(r['flops_per_step'], 2, 1e-9)} ({_fmt(r.get('model_flops_per_step'), 2, 1e-9)}) "
            f"| {_fmt(r['tflops'], 4)} | {_fmt(r['sample_ms'], 0)} |"
        )
    return "\n".join(lines)


def compare_table(comparisons: dict) -> str:
    lines = [
        "| workload | ms/step ours | ms/step theirs | speedup | model GFLOP ours / theirs | FLOPs ratio "
        "| same work | memory ours / theirs | sampling ours / theirs | adapted (theirs) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, c in comparisons.items():
        ms, mem, smp, model = c["ms_per_step"], c["peak_memory_mb"], c["sample_ms"], c["model_flops_per_step"]
        same = {True: "yes", False: "no", None: "-"}[c.get("same_work")]
        adapted = len(c.get("adaptations", {}).get("theirs", []))
        lines.append(
            f"| {name} | {_fmt(ms['ours'])} | {_fmt(ms['theirs'])} | {_fmt(c['speedup'], 2)}x "
            f"| {_fmt(model['ours'], 2, 1e-9)} / {_fmt(model['theirs'], 2, 1e-9)} "
            f"| {_fmt(c.get('flops_ratio'), 2)} | {same} | {_fmt(mem['ratio'], 2)} | {_fmt(smp['ratio'], 2)} "
            f"| {adapted} |"
        )
    return "\n".join(lines)


def quality_compare_table(report: dict) -> str:
    lines = [
        "| environment | package | steps x batch | training s (CPU s) | final loss | colour | shape | direction "
        "| all |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    batch = report["config"]["batch_size"]
    for side in ("ours", "theirs"):
        r = report[side]
        if "score" not in r:
            lines.append(f"| {side} | error: {r.get('error', '?')[:80]} | | | | | | | |")
            continue
        cells = " | ".join(f"{_fmt(r['score'][key], 0, 100)}%" for key in ATTRIBUTES)
        lines.append(
            f"| {side} | {r['package']} {r['package_version']} | {r['steps']} x {batch} "
            f"| {r['train_seconds']:.0f} ({r['train_cpu_seconds']:.0f}) | {_fmt(r['final_loss'], 4)} "
            f"| {cells} |"
        )
    return "\n".join(lines)


def quality_table(records: list[dict]) -> str:
    lines = [
        "| model | training s (CPU s) | steps | colour | shape | direction | all |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        if "error" in r and not r["curve"]:
            lines.append(f"| {r['model']} | error: {r['error'][:80]} | | | | | |")
        for point in r["curve"]:
            lines.append(
                f"| {r['model']} | {point['train_seconds']:.0f} ({point['train_cpu_seconds']:.0f}) "
                f"| {point['steps']} | {_fmt(point['color'], 0, 100)}% | {_fmt(point['shape'], 0, 100)}% "
                f"| {_fmt(point['direction'], 0, 100)}% | {_fmt(point['all'], 0, 100)}% |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--size",
        choices=SIZES,
        default=None,
        help="full: the reference workloads; cpu: scaled down for a CPU; tiny: seconds, for tests "
        "(default: full on CUDA, cpu otherwise)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps (default: 20 on CUDA, 5 on CPU); with --quality --compare: training steps "
        f"(default {QualityCompareConfig.steps})",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--no-sample", action="store_true", help="skip the sampling latency")
    parser.add_argument(
        "--compare",
        metavar="PYTHON",
        default=None,
        help="another environment's python (e.g. with the published packages): run every workload "
        "in both, alternating, and print the ratios; with --quality: train and score "
        "video-diffusion side by side",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds of alternation with --compare")
    parser.add_argument(
        "--no-isolate",
        action="store_true",
        help="measure in this process instead of one subprocess per workload (CPU memory is then not per workload)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per worker process (default: 1800; 6 hours with --quality --compare)",
    )
    parser.add_argument(
        "--quality", action="store_true", help="caption score vs training time of the demo models instead of speed"
    )
    parser.add_argument(
        "--models", default="video-diffusion,imagen,make-a-video,phenaki,nuwa", help="demo models for --quality"
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model for --quality")
    parser.add_argument("--points", default="0.25,0.5,1", help="fractions of the budget where --quality scores")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="--quality: a budget in steps instead (the points are then fractions of it), e.g. to "
        "compare settings on a loaded machine; CPU seconds are recorded either way",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--quality: override a demo setting (e.g. --set dim=16 --set batch_size=8)",
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=None,
        help="samples scored at each --quality point (default 24; with --compare "
        f"{QualityCompareConfig.eval_samples}, every caption once)",
    )
    parser.add_argument("--smoke", action="store_true", help="--quality with the demo's tiny settings (tests)")
    parser.add_argument(
        "--samples-dir",
        type=Path,
        default=None,
        help="--quality: also write a contact sheet of the samples at every point here",
    )
    compare = parser.add_argument_group("--quality --compare (both sides get the same values)")
    compare.add_argument("--batch-size", type=int, default=QualityCompareConfig.batch_size)
    compare.add_argument("--image-size", type=int, default=QualityCompareConfig.image_size)
    compare.add_argument("--frames", type=int, default=QualityCompareConfig.num_frames)
    compare.add_argument("--dim", type=int, default=QualityCompareConfig.dim)
    compare.add_argument(
        "--timesteps",
        type=int,
        default=QualityCompareConfig.timesteps,
        help="diffusion steps, trained and sampled (full DDPM)",
    )
    compare.add_argument("--lr", type=float, default=QualityCompareConfig.lr, help="Adam learning rate")
    compare.add_argument(
        "--high-noise-warmup",
        type=float,
        default=QualityCompareConfig.high_noise_warmup,
        help="share of the steps trained only on the noisiest tenth of the timesteps (0: uniform from the start)",
    )
    compare.add_argument("--seed", type=int, default=QualityCompareConfig.seed)
    compare.add_argument(
        "--threads",
        type=int,
        default=QualityCompareConfig.threads,
        help="torch threads of each side (both train at once)",
    )
    compare.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the training data file and both sides' samples here (default: a temp folder)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result file (default: benchmarks/results/<date>-<machine>[-quality|-compare|-quality-compare].json)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quality-worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--samples-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but torch sees no CUDA GPU here; use --device cpu")
    cuda = args.device == "cuda"
    side_by_side = args.quality and args.compare
    args.size = args.size or ("full" if cuda else "cpu")
    if args.steps is None:
        args.steps = QualityCompareConfig.steps if side_by_side else 20 if cuda else 5
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.eval_samples is None:
        args.eval_samples = QualityCompareConfig.eval_samples if side_by_side else 24
    if args.timeout is None:
        args.timeout = 6 * 3600 if side_by_side else 1800
    if args.steps < 1:
        raise SystemExit(f"bench: --steps must be at least 1, got {args.steps}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s")  # workers' go to their stderr log
    if args.worker:  # inside a worker process: measure one workload, print one JSON line
        result = measure(args.worker, args.size, args.device, args.steps, args.warmup, sample=not args.no_sample)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0
    if args.quality_worker:  # inside a worker process of --quality --compare
        result = quality_worker(args.quality_worker, args.samples_out)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0
    args = resolve_defaults(args)

    info = machine_info()
    report: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python3 tools/bench.py " + shlex.join(argv),
        "machine": info,
        "torch": info["torch"],
        "git": git_state(),
    }
    if args.quality and args.compare:
        config = QualityCompareConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            image_size=args.image_size,
            num_frames=args.frames,
            dim=args.dim,
            timesteps=args.timesteps,
            lr=args.lr,
            high_noise_warmup=args.high_noise_warmup,
            eval_samples=args.eval_samples,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
        )
        report["compare_python"] = args.compare
        report["quality_compare"] = quality_compare(args.compare, config, args.timeout, data_dir=args.data_dir)
        table = quality_compare_table(report["quality_compare"])
    elif args.quality:
        models = [m for m in args.models.split(",") if m]
        points = sorted(float(p) for p in args.points.split(","))
        overrides = {}
        for item in args.set:
            key, _, value = item.partition("=")
            overrides[key.strip()] = float(value) if "." in value or "e-" in value else int(value)
        report["quality"] = quality(
            models,
            args.minutes,
            args.device,
            points,
            args.eval_samples,
            smoke=args.smoke,
            max_steps=args.max_steps,
            overrides=overrides,
            samples_dir=args.samples_dir,
        )
        table = quality_table(report["quality"])
    else:
        names = [n for n in args.workloads.split(",") if n]
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            raise SystemExit(f"bench: unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
        report.update(size=args.size, steps=args.steps, warmup=args.warmup)
        if args.compare:
            report["compare_python"] = args.compare
            records, comparisons = [], {}
            for name in names:
                ours, theirs = [], []
                for _ in range(args.repeats):  # alternate, so drifts in machine load hit both sides alike
                    ours.append(run_worker(sys.executable, name, args))
                    theirs.append(run_worker(args.compare, name, args))
                records += [{**r, "environment": "ours"} for r in ours] + [
                    {**r, "environment": "theirs"} for r in theirs
                ]
                comparisons[name] = compare_records(ours, theirs)
                logger.info("%s: %s", name, "; ".join(comparisons[name]["errors"]) or "measured on both sides")
            report["results"], report["comparison"] = records, comparisons
            table = compare_table(comparisons)
        else:
            report["results"] = [
                measure_safely(n, args) if args.no_isolate else run_worker(sys.executable, n, args) for n in names
            ]
            table = speed_table(report["results"])

    report["git_at_end"] = git_state()  # differs from "git" when someone committed during the run
    kind = "-quality" if args.quality else ""
    kind += "-compare" if args.compare else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-{machine_tag(info)}{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
