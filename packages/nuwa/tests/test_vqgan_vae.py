"""VQGanVAE: token round trip, any depth, training signal, GAN losses, lazy VGG, options and input errors."""

import copy
import logging

import pytest
import torch
from torch import nn

from nuwa_pytorch import VQGanVAE


def test_indices_round_trip_equals_reconstruction(make_vae):
    vae = make_vae().eval()
    video = torch.rand(2, 3, 3, 16, 16)  # (batch, frames, channels, height, width)
    indices = vae.get_video_indices(video)
    assert indices.shape == (2, 3 * 4 * 4) and indices.dtype == torch.long
    decoded = vae.codebook_indices_to_video(indices, frames_per_batch=2)
    assert decoded.shape == video.shape
    torch.testing.assert_close(decoded, vae(video), atol=1e-5, rtol=1e-5)
    # the structured layout and the image API agree
    grid = indices.reshape(2, 3, 4, 4)
    torch.testing.assert_close(vae.codebook_indices_to_video(grid), decoded)
    torch.testing.assert_close(vae.get_codebook_indices(video[:, 1]), grid[:, 1].flatten(1))
    torch.testing.assert_close(vae.decode(vae.encode(video)), decoded, atol=1e-5, rtol=1e-5)


def test_three_layers_feature_map_size(make_vae):
    vae = make_vae(image_size=32, num_layers=3).eval()
    assert vae.fmap_size == 4
    images = torch.rand(2, 3, 32, 32)
    fmap = vae.encode(images)
    assert fmap.shape == (2, 8 * 4, 4, 4)
    assert vae.get_codebook_indices(images).shape == (2, 16)
    assert vae(images).shape == images.shape


def structured_images() -> torch.Tensor:
    """Four smooth 16 px images (ramps, a product, flat grey): learnable by a tiny autoencoder in a few steps."""
    ramp = torch.linspace(0, 1, 16)
    horizontal, vertical = ramp[None].expand(16, 16), ramp[:, None].expand(16, 16)
    return torch.stack(
        [
            torch.stack([horizontal, vertical, horizontal * vertical]),
            torch.stack([1 - horizontal] * 3),
            torch.stack([vertical, 1 - vertical, horizontal]),
            torch.full((3, 16, 16), 0.7),
        ]
    )


def test_reconstruction_loss_falls(make_vae):
    vae = make_vae(vq_kmeans_init=False, l2_recon_loss=True)
    images = structured_images()
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    errors = []
    for _ in range(25):
        loss, recon = vae(images, return_loss=True, return_recons=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append((recon - images).pow(2).mean().item())
    assert sum(errors[-3:]) / 3 < 0.5 * sum(errors[:3]) / 3


def test_gan_losses_train_separate_parameters(make_vae, tiny_vgg):
    vae = make_vae(use_vgg_and_gan=True, vgg=tiny_vgg, discr_dim=8)
    images = torch.rand(2, 3, 16, 16)
    loss, recon = vae(images, return_loss=True, return_recons=True)
    assert torch.isfinite(loss) and recon.shape == images.shape
    loss.backward()
    assert all(p.grad is None for p in vae.discr.parameters()), "the generator loss trained the discriminator"
    assert vae.last_layer.grad.abs().sum() > 0
    assert all(p.requires_grad for p in vae.discr.parameters())

    vae.zero_grad(set_to_none=True)
    discr_loss = vae(images, return_discr_loss=True, apply_grad_penalty=True)
    assert torch.isfinite(discr_loss)
    discr_loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.discr.parameters())
    assert vae.last_layer.grad is None, "the discriminator loss trained the decoder"
    # the perceptual network is not part of the checkpoint
    assert not any(key.startswith("_vgg") or "network" in key for key in vae.state_dict())


def test_without_cached_vgg_it_trains_without_the_perceptual_term_after_one_warning(
    make_vae, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache: no pretrained VGG16
    vae = make_vae(use_vgg_and_gan=True, discr_dim=8)  # construction is offline and never looks for VGG
    images = torch.rand(2, 3, 16, 16)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            loss = vae(images, return_loss=True)
            loss.backward()
    warnings = [r.getMessage() for r in caplog.records if "perceptual loss" in r.getMessage()]
    assert len(warnings) == 1 and "vgg=" in warnings[0] and "TORCH_HOME" in warnings[0]
    assert not vae.perceptual_loss.available
    # the loss is exactly the model's without its perceptual term: the same as with a zero weight
    with_weight_zero = copy.deepcopy(vae)
    with_weight_zero.perceptual_loss_weight = 0.0
    vae.eval(), with_weight_zero.eval()
    with torch.no_grad():
        torch.testing.assert_close(vae(images, return_loss=True), with_weight_zero(images, return_loss=True))


def test_vgg_accepts_any_module_returning_feature_maps(make_vae):
    # a plain conv stack (no ReLU -> MaxPool stages): its output is the feature map
    conv_stack = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GELU(), nn.Conv2d(6, 6, 3, padding=1))
    vae = make_vae(use_vgg_and_gan=True, vgg=conv_stack, discr_dim=8).eval()
    images = torch.rand(2, 3, 16, 16)
    perceptual = vae.perceptual_loss
    assert perceptual.available
    target = images * 2 - 1
    recon = vae._reconstruct(target)[0].detach()  # the unclamped reconstruction the loss sees
    distance = perceptual(recon, target)
    assert distance > 0 and perceptual(target, target) == 0
    # it is the network's term: scaling its weight changes the loss by exactly the weighted distance (no_grad:
    # evaluation uses a neutral adaptive GAN weight)
    with torch.no_grad():
        base = vae(images, return_loss=True)
        vae.perceptual_loss_weight = 3.0
        torch.testing.assert_close(vae(images, return_loss=True) - base, 2.0 * distance, rtol=1e-4, atol=1e-5)
    # another network gives another distance
    other = make_vae(use_vgg_and_gan=True, vgg=nn.Sequential(nn.Conv2d(3, 4, 5, padding=2)), discr_dim=8)
    assert not torch.allclose(other.perceptual_loss(recon, target), distance)


def test_low_dim_cosine_codebook_with_orthogonal_regularisation(make_vae):
    vae = make_vae(vq_codebook_dim=4, vq_orthogonal_reg_weight=10.0, vq_use_cosine_sim=True)
    assert not vae.vq.ema_update  # the regulariser needs a codebook learned by gradients
    loss = vae(torch.rand(2, 3, 16, 16), return_loss=True)
    loss.backward()
    assert vae.vq.embed.grad is not None and vae.vq.embed.grad.abs().sum() > 0
    vae.eval()
    indices = vae.get_video_indices(torch.rand(1, 2, 3, 16, 16))
    assert vae.codebook_indices_to_video(indices).shape == (1, 2, 3, 16, 16)


def test_save_and_load_pretrained(make_vae, tmp_path):
    vae = make_vae().eval()
    vae.save_pretrained(tmp_path / "vae")
    loaded = VQGanVAE.from_pretrained(tmp_path / "vae").eval()
    images = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded(images), vae(images))


def test_bad_inputs(make_vae):
    with pytest.raises(ValueError, match="image_size: expected a multiple of 2 \\*\\* num_layers = 4"):
        make_vae(image_size=18)
    with pytest.raises(ValueError, match="use_attn"):
        make_vae(use_attn=(True,))
    with pytest.raises(ValueError, match="channels: the perceptual loss takes 1 \\(grey\\) or 3"):
        make_vae(channels=5, use_vgg_and_gan=True)
    vae = make_vae()
    with pytest.raises(ValueError, match="img: expected shape \\(batch, 3, 16, 16\\)"):
        vae(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="video: expected shape \\(batch, frames, 3, 16, 16\\)"):
        vae.get_video_indices(torch.rand(1, 2, 1, 16, 16))
    with pytest.raises(ValueError, match="whole number of frames"):
        vae.codebook_indices_to_video(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="indices: expected values in \\[0, 31\\]"):
        vae.codebook_indices_to_video(torch.full((1, 16), 32))
    with pytest.raises(ValueError, match="no discriminator"):
        vae(torch.rand(1, 3, 16, 16), return_discr_loss=True)


def test_seed_readme_vae_example_runs_offline(tmp_path, monkeypatch):
    """The seed README's first block, verbatim but for its sizes, with an empty torch cache (no VGG16 weights)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    vae = VQGanVAE(dim=16, image_size=32, num_layers=2)

    imgs = torch.randn(10, 3, 32, 32)

    # alternate learning for autoencoder ...

    loss = vae(imgs, return_loss=True)
    loss.backward()

    # and the discriminator ...

    discr_loss = vae(imgs, return_discr_loss=True)
    discr_loss.backward()

    assert torch.isfinite(loss) and torch.isfinite(discr_loss)
    assert any(p.grad is not None for p in vae.discr.parameters())
