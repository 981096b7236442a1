"""CViViT: causality in time, losses that train, the GAN/perceptual paths, image input, checkpoints, bad inputs."""

import logging

import pytest
import torch
from torch import nn

from phenaki_pytorch import CViViT


def _pre_quantization_features(cvivit, video):
    """The encoder output right before the quantizer, `(b, t, h, w, d)`, captured with a forward hook."""
    captured = {}
    handle = cvivit.vq.register_forward_hook(lambda module, args, out: captured.update(x=args[0].detach()))
    ids = cvivit(video, return_only_codebook_ids=True)
    handle.remove()
    frames, height, width = ids.shape[1:]
    return captured["x"].reshape(video.shape[0], frames, height, width, -1), ids


def test_temporal_encoder_is_causal(make_cvivit):
    cvivit = make_cvivit(temporal_depth=2).eval()
    video = torch.rand(1, 3, 7, 16, 16)  # token frames: [0], [1, 2], [3, 4], [5, 6]
    features, ids = _pre_quantization_features(cvivit, video)
    assert ids.shape == (1, 4, 2, 2)

    for token_frame, first_pixel_frame in ((1, 1), (2, 3), (3, 5)):
        changed = video.clone()
        changed[:, :, first_pixel_frame] = torch.rand_like(changed[:, :, first_pixel_frame])
        new_features, new_ids = _pre_quantization_features(cvivit, changed)
        # nothing before the changed frame moves, the changed token frame does
        assert torch.equal(new_features[:, :token_frame], features[:, :token_frame])
        assert torch.equal(new_ids[:, :token_frame], ids[:, :token_frame])
        assert (new_features[:, token_frame] - features[:, token_frame]).abs().max() > 1e-4


def test_decoder_is_causal_so_a_prefix_decodes_the_same(make_cvivit):
    cvivit = make_cvivit().eval()
    ids = torch.randint(0, cvivit.codebook_size, (2, 3, 2, 2))
    full = cvivit.decode_from_codebook_indices(ids)
    prefix = cvivit.decode_from_codebook_indices(ids[:, :2])
    assert full.shape == (2, 3, 5, 16, 16) and prefix.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(full[:, :, :3], prefix, atol=1e-5, rtol=1e-5)
    other = ids.clone()
    other[:, 2] = (other[:, 2] + 1) % cvivit.codebook_size
    assert torch.equal(cvivit.decode_from_codebook_indices(other)[:, :, :3], full[:, :, :3])


def test_reconstruction_loss_falls_on_a_tiny_synthetic_set(make_cvivit, moving_squares):
    cvivit = make_cvivit(patch_size=4, quantizer_kwargs=dict(kmeans_init=True))
    videos = moving_squares(num_videos=8)
    optimizer = torch.optim.Adam(cvivit.parameters(), lr=2e-3)
    recon_losses = []
    for step in range(30):
        batch = videos[(step * 4) % 8 : (step * 4) % 8 + 4]
        loss, breakdown = cvivit(batch, return_loss_breakdown=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recon_losses.append(breakdown.recon.item())
    first, last = sum(recon_losses[:5]) / 5, sum(recon_losses[-5:]) / 5
    assert last < 0.3 * first, (first, last)

    # the round trip through the codebook indices reconstructs the training videos better than at the start
    cvivit.eval()
    ids = cvivit(videos, return_only_codebook_ids=True)
    round_trip = cvivit.decode_from_codebook_indices(ids)
    assert round_trip.shape == videos.shape and 0 <= round_trip.min() and round_trip.max() <= 1
    assert torch.nn.functional.mse_loss(round_trip * 2 - 1, videos * 2 - 1).item() < first


def _tiny_vgg():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(use_hinge_loss=False),
        dict(channels=1),
        dict(channels=1, vgg=None),
        dict(use_hinge_loss=True),
    ],
)
def test_gan_paths_the_published_package_broke(make_cvivit, kwargs, caplog):
    """use_hinge_loss=False, channels=1 and apply_grad_penalty=False all train both players."""
    kwargs = {"vgg": _tiny_vgg(), **kwargs}
    cvivit = make_cvivit(use_vgg_and_gan=True, discr_base_dim=8, discr_layers=3, **kwargs)
    channels = kwargs.get("channels", 3)
    video = torch.rand(2, channels, 5, 16, 16)

    with caplog.at_level(logging.WARNING):
        loss, breakdown = cvivit(video, return_loss_breakdown=True)
        cvivit(video)  # a second call does not warn again
    assert torch.isfinite(loss)
    assert breakdown.adaptive_weight > 0 and torch.isfinite(breakdown.generator)
    if kwargs["vgg"] is None:
        assert breakdown.perceptual == 0
        assert sum("perceptual loss" in r.getMessage() for r in caplog.records) == 1
    else:
        assert breakdown.perceptual > 0
    loss.backward()
    assert cvivit.to_rest_frame_pixels[0].weight.grad is not None

    for apply_grad_penalty in (False, True):
        cvivit.zero_grad()
        discr_loss = cvivit(video, return_discr_loss=True, apply_grad_penalty=apply_grad_penalty)
        assert discr_loss.ndim == 0 and torch.isfinite(discr_loss)
        discr_loss.backward()
        assert all(p.grad is not None for p in cvivit.discr.parameters())
        # the discriminator step does not touch the generator
        assert cvivit.to_rest_frame_pixels[0].weight.grad is None


def test_perceptual_network_is_not_in_the_state_dict(make_cvivit):
    cvivit = make_cvivit(use_vgg_and_gan=True, vgg=_tiny_vgg(), discr_base_dim=8, discr_layers=3)
    cvivit(torch.rand(1, 3, 3, 16, 16))
    assert not any(key.startswith(("vgg", "_perceptual")) for key in cvivit.state_dict())
    assert any(key.startswith("discr.") for key in cvivit.state_dict())


def test_image_input_is_a_one_frame_video(make_cvivit):
    cvivit = make_cvivit().eval()
    images = torch.rand(2, 3, 16, 16)
    ids = cvivit(images, return_only_codebook_ids=True)
    assert ids.shape == (2, 1, 2, 2)
    assert torch.equal(ids, cvivit(images[:, :, None], return_only_codebook_ids=True))
    assert cvivit(images, return_recons_only=True).shape == (2, 3, 1, 16, 16)
    assert cvivit(images).ndim == 0


def test_encode_decode_and_token_counts(make_cvivit):
    cvivit = make_cvivit().eval()
    video = torch.rand(2, 3, 5, 16, 16)
    tokens, indices, quantizer_loss = cvivit.encode(video)
    assert tokens.shape == (2, 3, 2, 2, 32) and indices.shape == (2, 3, 2, 2) and quantizer_loss.ndim == 0
    decoded = cvivit.decode(tokens)
    torch.testing.assert_close(decoded, cvivit.decode_from_codebook_indices(indices), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cvivit.decode_from_codebook_indices(indices.flatten(1)), decoded)
    assert cvivit.num_tokens_per_frames(5) == 12
    assert cvivit.num_tokens_per_frames(4, include_first_frame=False) == 8
    assert cvivit.num_tokens_per_frames(9, image_size=32) == 5 * 16
    loss, recons = cvivit(video, return_recons=True)
    assert recons.shape == video.shape and loss.ndim == 0


def test_image_size_is_optional(make_cvivit):
    cvivit = make_cvivit(image_size=None)
    for size in (16, 24, 32):
        assert torch.isfinite(cvivit(torch.rand(1, 3, 3, size, size)))
    with pytest.raises(ValueError, match="image_size"):
        cvivit.num_tokens_per_frames(5)


@pytest.mark.parametrize("quantizer, codebook_size", [("vq", 5000), ("lfq", 64), ("fsq", 100)])
def test_quantizer_choices(make_cvivit, quantizer, codebook_size):
    cvivit = make_cvivit(quantizer=quantizer, codebook_size=codebook_size)
    assert cvivit.codebook_size >= codebook_size
    video = torch.rand(2, 3, 3, 16, 16)
    loss = cvivit(video)
    loss.backward()
    ids = cvivit.eval()(video, return_only_codebook_ids=True)
    assert ids.max() < cvivit.codebook_size


def test_save_and_load_pretrained(make_cvivit, tmp_path):
    cvivit = make_cvivit(use_vgg_and_gan=True, discr_base_dim=8, discr_layers=3).eval()
    cvivit.save_pretrained(tmp_path / "cvivit")
    loaded = CViViT.from_pretrained(tmp_path / "cvivit").eval()
    video = torch.rand(1, 3, 5, 16, 16)
    assert torch.equal(cvivit(video, return_recons_only=True), loaded(video, return_recons_only=True))


def test_bf16_autocast(make_cvivit):
    cvivit = make_cvivit()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cvivit(torch.rand(1, 3, 3, 16, 16))
    assert torch.isfinite(loss)
    loss.backward()


def test_bad_inputs_give_clear_errors(make_cvivit):
    cvivit = make_cvivit(use_vgg_and_gan=False)
    with pytest.raises(ValueError, match=r"1 \+ k \* temporal_patch_size \(2\).*got 4 frames"):
        cvivit(torch.rand(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="expected 3 channels"):
        cvivit(torch.rand(1, 1, 5, 16, 16))
    with pytest.raises(ValueError, match="not divisible by patch_size 8"):
        cvivit(torch.rand(1, 3, 5, 20, 16))
    with pytest.raises(ValueError, match="dimensional"):
        cvivit(torch.rand(3, 5, 16, 16, 1, 1))
    with pytest.raises(TypeError, match="floating"):
        cvivit(torch.zeros(1, 3, 5, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 63\]"):
        cvivit.decode_from_codebook_indices(torch.full((1, 2, 2, 2), 64))
    with pytest.raises(ValueError, match="use_vgg_and_gan=True"):
        cvivit(torch.rand(1, 3, 5, 16, 16), return_discr_loss=True)
    with pytest.raises(ValueError, match="patch_size"):
        CViViT(dim=32, codebook_size=10, image_size=20, patch_size=8)
