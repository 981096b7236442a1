"""Benchmarks: training speed of the reference workloads, and caption score versus training time.

    python3 tools/bench.py                                  # every workload: full size on CUDA, --size cpu on a CPU
    python3 tools/bench.py --size cpu --workloads imagen_base64,nuwa_10x128 --steps 5
    python3 tools/bench.py --compare /other/venv/bin/python # the same workloads in both environments, ratios
    python3 tools/bench.py --quality --minutes 3            # caption score vs training time of each demo model

Speed: each workload is one training step (forward, backward, AdamW) in bf16 autocast on CUDA, fp32 on the CPU,
timed over `--steps` steps after `--warmup`; reported as the median ms/step, samples/s, peak memory (CUDA:
`max_memory_allocated`; CPU: growth of the peak resident set size over the process's size before the first
step), achieved TFLOP/s (FLOPs of one step counted by `torch.utils.flop_counter.FlopCounterMode`) and, where the
package's README has a sampler, the latency of one sampling call. Every workload runs in its own subprocess (clean
peak memory, and the way `--compare` runs another environment).

The workloads are built with the seed READMEs' public APIs only (constructor keywords, `loss = model(...)`,
`model.sample(...)`), so this script runs unchanged in an environment with the published packages of the same names
instead of ours: that is what `--compare PYTHON` does, alternating between the two environments.
(`make_a_video_16x64` uses `SpaceTimeUnet`, which the make-a-video seed README does not show; its keywords are ours.)

Quality (`--quality`, this repository's environment only): trains each demo model (`tools/demo.py`, its default
settings) for `--minutes` on the built-in shapes dataset and measures the caption score at a few points of the
budget, so models can be compared by what they learn per unit of training time.

Results go to `--out` (default `benchmarks/results/<date>-<machine>[-quality|-compare].json`) with the machine, torch
version, date and the command line; a markdown table is printed for `benchmarks/README.md`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARKER = "BENCH_RESULT "
SIZES = ("full", "cpu", "tiny")


# ----------------------------------------------------------------------------------------------------------------
# workloads (README APIs only; torch and the packages are imported inside, so --help and the parent stay light)
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Workload:
    """One training step and, optionally, one sampling call of a reference workload at a given size."""

    model: object                     # the nn.Module whose parameters AdamW trains
    loss: Callable[[], object]        # computes the training loss of one batch
    batch_size: int
    description: str
    sample: Callable[[], object] | None = None
    sample_description: str = "no sampler in the README API"
    extra: dict = field(default_factory=dict)


def _pick(size: str, full, cpu, tiny):
    return {"full": full, "cpu": cpu, "tiny": tiny}[size]


def imagen_base64(size: str, device):
    import torch

    from imagen_pytorch import Imagen, Unet

    s = _pick(size,
              full=dict(dim=128, cond_dim=512, mults=(1, 2, 3, 4), blocks=3, image=64, batch=32, tokens=64,
                        sample_batch=8, sample_steps=25),
              cpu=dict(dim=32, cond_dim=128, mults=(1, 2, 3, 4), blocks=1, image=32, batch=4, tokens=16,
                       sample_batch=2, sample_steps=4),
              tiny=dict(dim=8, cond_dim=16, mults=(1, 2), blocks=1, image=16, batch=2, tokens=4,
                        sample_batch=1, sample_steps=2))
    attns = tuple(level > 0 for level in range(len(s["mults"])))  # attention on every level but the first
    unet = Unet(dim=s["dim"], cond_dim=s["cond_dim"], dim_mults=s["mults"], num_resnet_blocks=s["blocks"],
                layer_attns=attns, layer_cross_attns=attns)
    imagen = Imagen(unets=(unet,), image_sizes=(s["image"],), timesteps=1000, cond_drop_prob=0.1).to(device)
    images = torch.rand(s["batch"], 3, s["image"], s["image"], device=device)
    text_embeds = torch.randn(s["batch"], s["tokens"], 768, device=device)
    # sampling: the same U-Net in a cascade whose `timesteps` is the number of sampling steps
    sampler = Imagen(unets=(unet,), image_sizes=(s["image"],), timesteps=s["sample_steps"],
                     cond_drop_prob=0.1).to(device)
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

    s = _pick(size,
              full=dict(dim=64, mults=(1, 2, 4, 8), image=64, frames=16, batch=4, sample_steps=25),
              cpu=dict(dim=16, mults=(1, 2, 4, 8), image=32, frames=4, batch=1, sample_steps=4),
              tiny=dict(dim=8, mults=(1, 2), image=8, frames=2, batch=1, sample_steps=2))
    unet = Unet3D(dim=s["dim"], dim_mults=s["mults"])
    diffusion = GaussianDiffusion(unet, image_size=s["image"], num_frames=s["frames"], timesteps=1000,
                                  loss_type="l1").to(device)
    sampler = GaussianDiffusion(unet, image_size=s["image"], num_frames=s["frames"], timesteps=s["sample_steps"],
                                loss_type="l1").to(device)
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

    s = _pick(size,
              full=dict(dim=64, mults=(1, 2, 4, 8), image=64, frames=16, batch=4),
              cpu=dict(dim=16, mults=(1, 2, 4, 8), image=32, frames=8, batch=1),
              tiny=dict(dim=8, mults=(1, 2), image=8, frames=2, batch=1))
    levels = len(s["mults"])
    depths = {} if levels == 4 else {"resnet_block_depths": 1}  # the default has one entry per level of four
    unet = SpaceTimeUnet(dim=s["dim"], dim_mults=s["mults"],
                         self_attns=tuple(level == levels - 1 for level in range(levels)),
                         temporal_compression=tuple(level > 0 for level in range(levels)), **depths).to(device)
    videos = torch.randn(s["batch"], 3, s["frames"], s["image"], s["image"], device=device)
    noise = torch.randn_like(videos)
    times = torch.rand(s["batch"], device=device)

    def loss():
        return F.mse_loss(unet(videos + noise, timestep=times), noise)

    return Workload(
        model=unet, loss=loss, batch_size=s["batch"],
        description=f"SpaceTimeUnet(dim={s['dim']}, dim_mults={s['mults']}, attention at the last level, temporal "
                    f"compression below the first), {s['frames']} frames of {s['image']}x{s['image']}, "
                    f"batch {s['batch']}",
    )


def _cvivit_settings(size: str) -> dict:
    return _pick(size,
                 full=dict(dim=512, codebook=5000, image=128, patch=16, depth=4, heads=8, dim_head=64, frames=17),
                 cpu=dict(dim=64, codebook=512, image=64, patch=16, depth=1, heads=2, dim_head=32, frames=9),
                 tiny=dict(dim=16, codebook=64, image=16, patch=8, depth=1, heads=2, dim_head=8, frames=3))


def _cvivit(s: dict):
    from phenaki_pytorch import CViViT

    return CViViT(dim=s["dim"], codebook_size=s["codebook"], image_size=s["image"], patch_size=s["patch"],
                  temporal_patch_size=2, spatial_depth=s["depth"], temporal_depth=s["depth"], dim_head=s["dim_head"],
                  heads=s["heads"], use_vgg_and_gan=False)


def phenaki_cvivit_17x128(size: str, device):
    import torch

    s = {**_cvivit_settings(size), "batch": _pick(size, 4, 1, 1)}
    s["frames"] = _pick(size, 17, 5, 3)
    cvivit = _cvivit(s).to(device)
    videos = torch.rand(s["batch"], 3, s["frames"], s["image"], s["image"], device=device)
    return Workload(
        model=cvivit, loss=lambda: cvivit(videos), batch_size=s["batch"],
        description=f"CViViT(dim={s['dim']}, patch {s['patch']}, depths {s['depth']}, no GAN), {s['frames']} frames "
                    f"of {s['image']}x{s['image']}, batch {s['batch']}",
        sample_description="a tokenizer: nothing to sample",
    )


def phenaki_maskgit_576tok(size: str, device):
    import torch

    from phenaki_pytorch import MaskGit, Phenaki

    cv = _cvivit_settings(size)
    s = _pick(size,
              full=dict(dim=512, depth=6, context=768, text=32, batch=8),
              cpu=dict(dim=64, depth=2, context=768, text=8, batch=2),
              tiny=dict(dim=16, depth=1, context=768, text=4, batch=1))
    grid = (cv["image"] // cv["patch"]) ** 2
    token_frames = 1 + (cv["frames"] - 1) // 2
    seq_len = grid * token_frames
    maskgit = MaskGit(num_tokens=cv["codebook"], max_seq_len=seq_len, dim=s["dim"], dim_context=s["context"],
                      depth=s["depth"])
    phenaki = Phenaki(cvivit=_cvivit(cv), maskgit=maskgit).to(device)
    ids = torch.randint(0, cv["codebook"], (s["batch"], seq_len), device=device)
    text_embeds = torch.randn(s["batch"], s["text"], s["context"], device=device)
    return Workload(
        model=phenaki,
        loss=lambda: phenaki(video_codebook_ids=ids, text_embeds=text_embeds),
        batch_size=s["batch"],
        description=f"MaskGit(dim={s['dim']}, depth={s['depth']}), {seq_len} video tokens, {s['text']} text tokens "
                    f"x {s['context']}, batch {s['batch']}",
        sample=lambda: phenaki.sample(text_embeds=text_embeds[:1], num_frames=cv["frames"], cond_scale=3.0),
        sample_description=f"1 video of {cv['frames']} frames (MaskGIT steps and C-ViViT decode)",
    )


def nuwa_10x128(size: str, device):
    import torch

    from nuwa_pytorch import NUWA, VQGanVAE

    s = _pick(size,
              full=dict(vae_dim=64, image=128, layers=3, dim=512, enc=6, dec=12, frames=10, batch=2, text=64),
              cpu=dict(vae_dim=16, image=32, layers=2, dim=64, enc=1, dec=2, frames=4, batch=1, text=16),
              tiny=dict(vae_dim=8, image=16, layers=2, dim=16, enc=1, dec=1, frames=2, batch=1, text=4))
    vae = VQGanVAE(dim=s["vae_dim"], image_size=s["image"], num_layers=s["layers"])
    nuwa = NUWA(vae=vae, dim=s["dim"], text_num_tokens=20000, text_enc_depth=s["enc"], text_enc_heads=8,
                text_max_seq_len=s["text"], max_video_frames=s["frames"], image_size=s["image"], dec_depth=s["dec"],
                dec_heads=8, dec_reversible=True, enc_reversible=True, sparse_3dna_kernel_size=3,
                sparse_3dna_dilation=(1, 2, 4), shift_video_tokens=True).to(device)
    text = torch.randint(1, 20000, (s["batch"], s["text"]), device=device)
    videos = torch.rand(s["batch"], s["frames"], 3, s["image"], s["image"], device=device)
    tokens = s["image"] // 2 ** s["layers"]
    return Workload(
        model=nuwa, loss=lambda: nuwa(text=text, video=videos, return_loss=True), batch_size=s["batch"],
        description=f"VQGanVAE(dim={s['vae_dim']}, image_size={s['image']}, num_layers={s['layers']}), "
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


def measure(name: str, size: str, device_name: str, steps: int, warmup: int, sample: bool = True,
            seed: int = 0) -> dict:
    """Builds workload `name` and times its training step (and its sampler); returns the result record."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(seed)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    workload = WORKLOADS[name](size, device)
    model = workload.model
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
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
    flops_method = "forward + backward"
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            with autocast:
                loss = workload.loss()
            loss.backward()
        optimizer.step()
        flops = counter.get_total_flops()
    except AssertionError:
        # FlopCounterMode's module hooks cannot follow autograd Functions that run modules inside (reversible
        # layers); count the forward without autograd and take the usual 3x (backward = 2x forward)
        optimizer.zero_grad(set_to_none=True)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), autocast:
            workload.loss()
        flops, flops_method = 3 * counter.get_total_flops(), "3 x forward"
        train_step()
    optimizer.zero_grad(set_to_none=True)

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
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "ms_per_step": median * 1e3,
        "ms_per_step_all": [t * 1e3 for t in times],
        "samples_per_s": workload.batch_size / median,
        "peak_memory_mb": peak_mb,
        "memory_kind": memory_kind,
        "flops_per_step": flops,
        "flops_method": flops_method,
        "tflops": flops / median / 1e12,
        "sample_ms": sample_ms,
        "sample": workload.sample_description if workload.sample is not None else None,
        "package": package,
        "package_version": _version(package),
        "package_path": str(Path(sys.modules[_module_of(package)].__file__).parent),
        "python": sys.executable,
        "torch": torch.__version__,
        "load_average": _load_average(),
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

def run_worker(python: str, name: str, args: argparse.Namespace) -> dict:
    """Runs one workload in a fresh `python` process (this script with --worker) and returns its record."""
    command = [python, str(Path(__file__).resolve()), "--worker", name, "--size", args.size, "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.no_sample:
        command.append("--no-sample")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.monotonic()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-6:]
    return {"workload": name, "size": args.size, "device": args.device, "python": python,
            "error": " | ".join(tail) or f"exit code {completed.returncode}",
            "seconds": round(time.monotonic() - started, 1)}


def measure_safely(name: str, args: argparse.Namespace) -> dict:
    """In-process measurement (`--no-isolate`): an error is recorded instead of stopping the other workloads."""
    try:
        return measure(name, args.size, args.device, args.steps, args.warmup, sample=not args.no_sample)
    except Exception as err:  # noqa: BLE001 - a broken workload must not hide the others' results
        return {"workload": name, "size": args.size, "device": args.device, "python": sys.executable,
                "error": f"{type(err).__name__}: {err}"}


def compare_records(ours: list[dict], theirs: list[dict]) -> dict:
    """Medians over the alternating repeats, and the ratios ours : theirs."""
    def median_of(records, key):
        values = [r[key] for r in records if r.get(key) is not None and "error" not in r]
        return statistics.median(values) if values else None

    summary = {}
    for key in ("ms_per_step", "peak_memory_mb", "tflops", "sample_ms"):
        a, b = median_of(ours, key), median_of(theirs, key)
        summary[key] = {"ours": a, "theirs": b, "ratio": (a / b) if a is not None and b else None}
    ms = summary["ms_per_step"]
    summary["speedup"] = (ms["theirs"] / ms["ours"]) if ms["ours"] and ms["theirs"] else None
    summary["errors"] = [r["error"] for r in ours + theirs if "error" in r]
    return summary


# ----------------------------------------------------------------------------------------------------------------
# quality: caption score versus training time of the demo models
# ----------------------------------------------------------------------------------------------------------------

def quality(models: Sequence[str], minutes: float, device_name: str, points: Sequence[float], eval_samples: int,
            seed: int = 0, smoke: bool = False, max_steps: int | None = None, progress: bool = True,
            overrides: dict | None = None, samples_dir: Path | None = None) -> list[dict]:
    """Trains each demo model for `minutes` (its demo settings, or at most `max_steps` steps) and scores
    `eval_samples` samples at each fraction of the budget in `points`. Sampling time is not training time."""
    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    import demo

    from synthesis_core.datasets import CaptionScorer

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
            record["parameters"] = sum(p.numel() for p in model.parameters())
            for point in points:
                trainer.run(until=point, progress_bar=progress)
                started = time.monotonic()
                videos = demo.generate(model, prompts, config.sample_batch_size, device, seed)
                score = scorer.score(videos, prompts)
                if samples_dir is not None:
                    shown = min(12, len(prompts))
                    samples_dir.mkdir(parents=True, exist_ok=True)
                    demo.labelled_sheet(demo.upscale(videos[:shown]), prompts[:shown],
                                        samples_dir / f"{model_name}-{trainer.steps:05d}-steps.png")
                record["curve"].append({
                    "fraction": point, "train_seconds": round(trainer.train_seconds, 1),
                    "train_cpu_seconds": round(trainer.train_cpu_seconds, 1), "steps": trainer.steps,
                    "loss": trainer.recent_loss(), "sample_seconds": round(time.monotonic() - started, 1),
                    "load_average": _load_average(), "threads": torch.get_num_threads(),
                    **{key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in score.items()},
                })
        except Exception as err:  # noqa: BLE001 - one broken model must not hide the others
            record["error"] = f"{type(err).__name__}: {err}"
        results.append(record)
    return results


# ----------------------------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------------------------

def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    info["load_average"] = _load_average()
    return info


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
    lines = ["| workload | size | device | precision | ms/step | samples/s | peak memory (MB) | TFLOP/s "
             "| sampling (ms) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['size']} | {r['device']} | - | error: {r['error'][:80]} | | | | |")
            continue
        lines.append(f"| {r['workload']} | {r['size']} | {r['device']} | {r['precision']} | {_fmt(r['ms_per_step'])} "
                     f"| {_fmt(r['samples_per_s'], 2)} | {_fmt(r['peak_memory_mb'], 0)} | {_fmt(r['tflops'], 4)} "
                     f"| {_fmt(r['sample_ms'], 0)} |")
    return "\n".join(lines)


def compare_table(comparisons: dict) -> str:
    lines = ["| workload | ms/step ours | ms/step theirs | speedup | memory ours / theirs | sampling ours / theirs |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in comparisons.items():
        ms, mem, smp = c["ms_per_step"], c["peak_memory_mb"], c["sample_ms"]
        lines.append(f"| {name} | {_fmt(ms['ours'])} | {_fmt(ms['theirs'])} | {_fmt(c['speedup'], 2)}x "
                     f"| {_fmt(mem['ratio'], 2)} | {_fmt(smp['ratio'], 2)} |")
    return "\n".join(lines)


def quality_table(records: list[dict]) -> str:
    lines = ["| model | training s (CPU s) | steps | colour | shape | direction | all |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        if "error" in r and not r["curve"]:
            lines.append(f"| {r['model']} | error: {r['error'][:80]} | | | | | |")
        for point in r["curve"]:
            lines.append(f"| {r['model']} | {point['train_seconds']:.0f} ({point['train_cpu_seconds']:.0f}) "
                         f"| {point['steps']} | {_fmt(point['color'], 0, 100)}% | {_fmt(point['shape'], 0, 100)}% "
                         f"| {_fmt(point['direction'], 0, 100)}% | {_fmt(point['all'], 0, 100)}% |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, from {', '.join(WORKLOADS)}")
    parser.add_argument("--size", choices=SIZES, default=None,
                        help="full: the reference workloads; cpu: scaled down for a CPU; tiny: seconds, for tests "
                             "(default: full on CUDA, cpu otherwise)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 CUDA, 1 CPU)")
    parser.add_argument("--no-sample", action="store_true", help="skip the sampling latency")
    parser.add_argument("--compare", metavar="PYTHON", default=None,
                        help="another environment's python (e.g. with the published packages): run every workload "
                             "in both, alternating, and print the ratios")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of alternation with --compare")
    parser.add_argument("--no-isolate", action="store_true",
                        help="measure in this process instead of one subprocess per workload (CPU memory is then "
                             "not per workload)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per workload process")
    parser.add_argument("--quality", action="store_true",
                        help="caption score vs training time of the demo models instead of speed")
    parser.add_argument("--models", default="video-diffusion,imagen,make-a-video,phenaki,nuwa",
                        help="demo models for --quality")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model for --quality")
    parser.add_argument("--points", default="0.25,0.5,1", help="fractions of the budget where --quality scores")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="--quality: a budget in steps instead (the points are then fractions of it), e.g. to "
                             "compare settings on a loaded machine; CPU seconds are recorded either way")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="--quality: override a demo setting (e.g. --set dim=16 --set batch_size=8)")
    parser.add_argument("--eval-samples", type=int, default=24, help="samples scored at each --quality point")
    parser.add_argument("--smoke", action="store_true", help="--quality with the demo's tiny settings (tests)")
    parser.add_argument("--samples-dir", type=Path, default=None,
                        help="--quality: also write a contact sheet of the samples at every point here")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default: benchmarks/results/<date>-<machine>[-quality|-compare].json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but torch sees no CUDA GPU here; use --device cpu")
    cuda = args.device == "cuda"
    args.size = args.size or ("full" if cuda else "cpu")
    args.steps = args.steps if args.steps is not None else (20 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if args.steps < 1:
        raise SystemExit(f"bench: --steps must be at least 1, got {args.steps}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:  # inside a worker process: measure one workload, print one JSON line
        result = measure(args.worker, args.size, args.device, args.steps, args.warmup, sample=not args.no_sample)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0
    args = resolve_defaults(args)

    info = machine_info()
    report: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python3 tools/bench.py " + shlex.join(argv),
        "machine": info,
        "torch": info["torch"],
    }
    if args.quality:
        models = [m for m in args.models.split(",") if m]
        points = sorted(float(p) for p in args.points.split(","))
        overrides = {}
        for item in args.set:
            key, _, value = item.partition("=")
            overrides[key.strip()] = float(value) if "." in value or "e-" in value else int(value)
        report["quality"] = quality(models, args.minutes, args.device, points, args.eval_samples, smoke=args.smoke,
                                    max_steps=args.max_steps, overrides=overrides, samples_dir=args.samples_dir)
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
                records += [{**r, "environment": "ours"} for r in ours] + \
                           [{**r, "environment": "theirs"} for r in theirs]
                comparisons[name] = compare_records(ours, theirs)
            report["results"], report["comparison"] = records, comparisons
            table = compare_table(comparisons)
        else:
            report["results"] = [measure_safely(n, args) if args.no_isolate else run_worker(sys.executable, n, args)
                                 for n in names]
            table = speed_table(report["results"])

    kind = "-quality" if args.quality else "-compare" if args.compare else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-{machine_tag(info)}{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
