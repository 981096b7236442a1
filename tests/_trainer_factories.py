"""Tiny trainers of every package, built the same way by the one-process resume tests (test_resume.py) and by the
two-process worker (_multiprocess_worker.py): a plain module, so that a script started by torchrun imports it too.

`build(kind, folder, seed=...)` returns a `Run`: the package's trainer, its `BaseTrainer` (`engine`: the trainer
itself, every trainer is one) and `step()`, one optimizer step of the trainer's own training step (two
micro-batches each) returning its losses. Models are initialised from a fixed seed and trained on a fixed tiny data
set of 6 batches of 2 (3 per process with two processes), so that the first step ends in the middle of an
epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

KINDS = ("imagen", "video-diffusion", "make-a-video", "phenaki", "cvivit", "nuwa", "vqgan-vae")
# the trainer of each package that the two-process test runs
PACKAGE_KINDS = {
    "imagen": "imagen",
    "video-diffusion": "video-diffusion",
    "make-a-video": "make-a-video",
    "phenaki": "phenaki",
    "nuwa": "vqgan-vae",
}
NUM_ITEMS = 12
MODEL_SEED = 1234


@dataclass
class Run:
    trainer: Any
    engine: Any  # synthesis_core.training.BaseTrainer
    step: Callable[[], list[float]]

    def save(self, path: Path) -> Any:
        return self.trainer.save(path)

    def load(self, path: Path) -> Any:
        return self.trainer.load(path)

    def weights(self) -> list[torch.Tensor]:
        """Every registered model's parameters and buffers, then their EMA copies'."""
        tensors = []
        for name in self.engine.models:
            tensors += [t.detach() for t in self.engine.unwrap(name).state_dict().values()]
            ema = self.engine.ema(name)
            if ema is not None:
                tensors += [t.detach() for t in ema.ema_model.state_dict().values()]
        return tensors


def _data(seed: int = 5) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _imagen(folder: Path, seed: int) -> Run:
    from torch.utils.data import DataLoader, TensorDataset

    from imagen_pytorch import Imagen, ImagenTrainer, Unet

    torch.manual_seed(MODEL_SEED)
    unet = Unet(
        dim=8,
        dim_mults=(1, 2),
        num_resnet_blocks=1,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
        attn_heads=2,
        attn_dim_head=8,
        cond_dim=16,
        attn_pool_num_latents=4,
        num_time_tokens=1,
    )
    imagen = Imagen(unet, image_sizes=8, text_embed_dim=16, timesteps=10)
    trainer = ImagenTrainer(
        imagen, seed=seed, cpu=True, gradient_accumulate_every=2, ema_update_every=1, ema_update_after_step=0
    )
    g = _data()
    data = TensorDataset(torch.rand(NUM_ITEMS, 3, 8, 8, generator=g), torch.randn(NUM_ITEMS, 4, 16, generator=g))
    trainer.add_train_dataloader(DataLoader(data, batch_size=2, shuffle=True))
    return Run(trainer, trainer, lambda: [trainer.train_step(unet_number=1)])


def _video_diffusion(folder: Path, seed: int) -> Run:
    from synthesis_core.video import save_video
    from video_diffusion_pytorch import GaussianDiffusion, Trainer, Unet3D

    # every process writes its own copy of the same videos: none waits for another one's files
    videos = folder / f"videos-{os.environ.get('RANK', '0')}"
    videos.mkdir(parents=True, exist_ok=True)
    g = _data()
    for index in range(NUM_ITEMS):
        save_video(torch.rand(3, 3, 8, 8, generator=g), videos / f"{index}.gif")
    torch.manual_seed(MODEL_SEED)
    unet = Unet3D(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
    diffusion = GaussianDiffusion(unet, image_size=8, num_frames=3, timesteps=10, sample_steps=2)
    trainer = Trainer(
        diffusion,
        videos,
        train_batch_size=2,
        train_num_steps=1000,
        save_and_sample_every=1000,
        gradient_accumulate_every=2,
        step_start_ema=0,
        update_ema_every=1,
        num_sample_rows=1,
        results_folder=folder / "results",
        seed=seed,
        cpu=True,
    )
    return Run(trainer, trainer, lambda: [trainer.train_step()["loss"]])


def _make_a_video(folder: Path, seed: int) -> Run:
    from make_a_video_pytorch import MakeAVideo, MakeAVideoTrainer, SpaceTimeUnet

    torch.manual_seed(MODEL_SEED)
    unet = SpaceTimeUnet(
        dim=8,
        channels=3,
        dim_mults=(1, 2),
        self_attns=(False, True),
        temporal_compression=(False, True),
        resnet_block_depths=(1, 1),
        attn_dim_head=8,
        attn_heads=2,
        ff_mult=2,
        text_embed_dim=16,
    )
    model = MakeAVideo(unet, image_size=8, num_frames=4, timesteps=100, sample_steps=3)
    g = _data()
    mask = torch.ones(3, dtype=torch.bool)
    videos = [(torch.rand(3, 4, 8, 8, generator=g), torch.randn(3, 16, generator=g), mask) for _ in range(NUM_ITEMS)]
    images = [(torch.rand(3, 8, 8, generator=g), torch.randn(3, 16, generator=g), mask) for _ in range(NUM_ITEMS)]
    trainer = MakeAVideoTrainer(
        model,
        video_dataset=videos,
        image_dataset=images,
        batch_size=2,
        grad_accum_every=2,
        num_train_steps=1000,
        save_every=1000,
        sample_every=1000,
        ema_update_every=1,
        ema_update_after_step=0,
        results_folder=folder / "results",
        cpu=True,
        seed=seed,
    )
    return Run(trainer, trainer, lambda: list(trainer.train_step().values()))  # the video and image losses too


def _videos(num_frames: int, size: int = 16) -> list[torch.Tensor]:
    g = _data()
    return [torch.rand(3, num_frames, size, size, generator=g) for _ in range(NUM_ITEMS)]


def _phenaki(folder: Path, seed: int) -> Run:
    from phenaki_pytorch import CViViT, MaskGit, Phenaki, PhenakiTrainer

    torch.manual_seed(MODEL_SEED)
    cvivit = CViViT(
        dim=32,
        codebook_size=64,
        image_size=16,
        patch_size=8,
        temporal_patch_size=2,
        spatial_depth=1,
        temporal_depth=1,
        dim_head=8,
        heads=2,
        use_vgg_and_gan=False,
    )
    maskgit = MaskGit(num_tokens=64, max_seq_len=64, dim=32, depth=1, dim_context=16, heads=2, dim_head=8)
    phenaki = Phenaki(cvivit, maskgit, text_encoder_name=None)
    g = _data(6)
    mask = torch.ones(3, dtype=torch.bool)
    items = [(video, torch.randn(3, 16, generator=g), mask) for video in _videos(3)]
    trainer = PhenakiTrainer(
        phenaki,
        dataset=items,
        batch_size=2,
        grad_accum_every=2,
        num_train_steps=1000,
        save_results_every=None,
        save_model_every=None,
        ema_update_every=1,
        results_folder=folder / "results",
        cpu=True,
        seed=seed,
    )
    return Run(trainer, trainer, lambda: [trainer.train_step()["loss"]])


def _cvivit(folder: Path, seed: int) -> Run:
    from phenaki_pytorch import CViViT, CViViTTrainer

    torch.manual_seed(MODEL_SEED)
    cvivit = CViViT(
        dim=32,
        codebook_size=64,
        image_size=16,
        patch_size=4,
        temporal_patch_size=2,
        spatial_depth=1,
        temporal_depth=1,
        dim_head=8,
        heads=2,
        use_vgg_and_gan=True,
        discr_base_dim=8,
        discr_layers=3,
    )
    trainer = CViViTTrainer(
        cvivit,
        dataset=_videos(3),
        batch_size=2,
        grad_accum_every=2,
        num_train_steps=1000,
        apply_grad_penalty_every=2,
        save_results_every=None,
        save_model_every=None,
        ema_update_every=1,
        results_folder=folder / "results",
        cpu=True,
        seed=seed,
    )

    def step() -> list[float]:
        logs = trainer.train_step()
        return [logs["loss"], logs["discr_loss"]]

    return Run(trainer, trainer, step)


def _nuwa(folder: Path, seed: int) -> Run:
    from nuwa_pytorch import NUWA, NUWATrainer, VQGanVAE

    torch.manual_seed(MODEL_SEED)
    vae = VQGanVAE(
        dim=8,
        image_size=16,
        num_layers=2,
        vq_codebook_size=32,
        attn_heads=2,
        attn_dim_head=8,
        resnet_groups=4,
        discr_layers=2,
        use_vgg_and_gan=False,
    )
    nuwa = NUWA(
        vae=vae,
        dim=16,
        text_num_tokens=20,
        text_enc_depth=1,
        text_enc_heads=2,
        text_enc_dim_head=8,
        text_max_seq_len=6,
        max_video_frames=3,
        dec_depth=2,
        dec_heads=2,
        dec_dim_head=8,
        sparse_3dna_kernel_size=3,
        sparse_3dna_dilation=(1, 2),
    )
    g = _data(7)
    items = [(video, torch.randint(2, 20, (4,), generator=g)) for video in _videos(2)]
    trainer = NUWATrainer(
        nuwa,
        dataset=items,
        num_frames=2,
        batch_size=2,
        grad_accum_every=2,
        num_train_steps=1000,
        save_results_every=None,
        save_model_every=None,
        ema_update_every=1,
        results_folder=folder / "results",
        cpu=True,
        seed=seed,
    )
    return Run(trainer, trainer, lambda: [trainer.train_step()["loss"]])


def _vqgan_vae(folder: Path, seed: int) -> Run:
    from nuwa_pytorch import VQGanVAE, VQGanVAETrainer

    torch.manual_seed(MODEL_SEED)
    vgg = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    vae = VQGanVAE(
        dim=8,
        image_size=16,
        num_layers=2,
        vq_codebook_size=32,
        attn_heads=2,
        attn_dim_head=8,
        resnet_groups=4,
        discr_layers=2,
        use_vgg_and_gan=True,
        vgg=vgg,
        discr_dim=8,
    )
    g = _data(8)
    images = [torch.rand(3, 16, 16, generator=g) for _ in range(NUM_ITEMS)]
    trainer = VQGanVAETrainer(
        vae,
        dataset=images,
        batch_size=2,
        grad_accum_every=2,
        num_train_steps=1000,
        apply_grad_penalty_every=2,
        save_results_every=None,
        save_model_every=None,
        num_sample_images=2,
        ema_update_every=1,
        results_folder=folder / "results",
        cpu=True,
        seed=seed,
    )

    def step() -> list[float]:
        logs = trainer.train_step()
        return [logs["loss"], logs["discr_loss"]]

    return Run(trainer, trainer, step)


_BUILDERS = {
    "imagen": _imagen,
    "video-diffusion": _video_diffusion,
    "make-a-video": _make_a_video,
    "phenaki": _phenaki,
    "cvivit": _cvivit,
    "nuwa": _nuwa,
    "vqgan-vae": _vqgan_vae,
}


def build(kind: str, folder: Path, seed: int = 0) -> Run:
    """A fresh tiny trainer of `kind` (one of KINDS) writing under `folder`."""
    if kind not in _BUILDERS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _BUILDERS[kind](folder, seed)
