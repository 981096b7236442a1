"""Fixtures for the nuwa tests: single-threaded, offline, tiny models."""

import pytest
from torch import nn

from synthesis_core.testing import configure_test_process, seed_each_test  # noqa: F401

configure_test_process()


@pytest.fixture
def tiny_vgg() -> nn.Sequential:
    """A two-stage VGG-like feature network (ReLU before each max-pool) standing in for VGG16."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


def _tiny_vae(**kwargs):
    from nuwa_pytorch import VQGanVAE

    settings = dict(
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
    settings.update(kwargs)
    return VQGanVAE(**settings)


def _tiny_nuwa(vae=None, **kwargs):
    from nuwa_pytorch import NUWA

    settings = dict(
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
    settings.update(kwargs)
    return NUWA(vae=vae if vae is not None else _tiny_vae(), **settings)


@pytest.fixture
def make_vae():
    """Factory of tiny VQGanVAEs: 16 px images, 4 x 4 token grid, 32 codes, no GAN unless asked."""
    return _tiny_vae


@pytest.fixture
def make_nuwa():
    """Factory of tiny NUWAs over a tiny VAE: 3 frames of 4 x 4 tokens, 2 decoder layers."""
    return _tiny_nuwa
