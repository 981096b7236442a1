"""SpaceTimeUnet: identity temporal parts, images and videos with the same weights, conditioning, bad inputs."""

import pytest
import torch

from make_a_video_pytorch.blocks import is_temporal_parameter
from make_a_video_pytorch.unet import RMSNorm


def _perturb(module, which="temporal", scale=0.2):
    with torch.no_grad():
        for name, param in module.named_parameters():
            if (which == "temporal") == is_temporal_parameter(name):
                param.add_(torch.randn_like(param) * scale)


def test_every_temporal_part_starts_as_identity(make_unet):
    unet = make_unet(temporal_compression=False)
    kinds = {type(m).__name__ for name, m in unet.named_modules() if name.split(".")[-1].startswith("temporal_")}
    assert {"Conv1d", "SpaceTimeAttention"} <= kinds
    video, text = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 5, 16)
    out = unet(video, 10, text_embeds=text)
    torch.testing.assert_close(out, unet(video, 10, text_embeds=text, enable_time=False), rtol=1e-5, atol=1e-5)
    # the identity is a property of the initialisation: trained temporal weights mix frames
    _perturb(unet)
    assert not torch.allclose(unet(video, 10, text_embeds=text), out, atol=1e-3)
    unet.reset_temporal_parameters()
    torch.testing.assert_close(unet(video, 10, text_embeds=text), out, rtol=1e-5, atol=1e-5)


def test_temporal_compression_is_identity_on_static_videos(make_unet):
    unet = make_unet(temporal_compression=(False, True))
    assert {type(m).__name__ for _, m in unet.named_modules()} >= {"TemporalDownsample", "TemporalUpsample"}
    frame = torch.randn(2, 3, 1, 8, 8)
    static = frame.expand(-1, -1, 4, -1, -1)
    text = torch.randn(2, 2, 16)
    out = unet(static, 3, text_embeds=text)
    image_out = unet(frame[:, :, 0], 3, text_embeds=text)
    for t in range(4):
        torch.testing.assert_close(out[:, :, t], image_out, rtol=1e-5, atol=1e-5)


def test_video_frames_through_the_spatial_path_equal_image_outputs(make_unet):
    unet = make_unet()
    video, text = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 16)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = unet(video, torch.tensor([1, 50]), text_embeds=text, text_mask=mask, enable_time=False)
    for t in range(4):
        image = unet(video[:, :, t], torch.tensor([1, 50]), text_embeds=text, text_mask=mask)
        assert image.shape == (2, 3, 8, 8)
        torch.testing.assert_close(out[:, :, t], image, rtol=1e-5, atol=1e-5)


def test_channels_last_layout_gives_the_same_result(make_unet):
    fast = make_unet(channels_last=True)
    plain = make_unet(channels_last=False)
    plain.load_state_dict(fast.state_dict())
    _perturb(fast)
    plain.load_state_dict(fast.state_dict())
    video, text = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 2, 16)
    torch.testing.assert_close(
        fast(video, 7, text_embeds=text), plain(video, 7, text_embeds=text), rtol=1e-4, atol=1e-5
    )


def test_timestep_accepts_int_float_and_tensors(make_unet):
    unet = make_unet(text_embed_dim=None)
    video = torch.randn(2, 3, 4, 8, 8)
    out = unet(video, 5)
    torch.testing.assert_close(unet(video, 5.0), out)
    torch.testing.assert_close(unet(video, torch.tensor(5)), out)
    torch.testing.assert_close(unet(video, torch.tensor([5, 5])), out)
    torch.testing.assert_close(unet(video, torch.tensor([5.0, 5.0])), out)
    mixed = unet(video, torch.tensor([5.0, 0.25]))
    torch.testing.assert_close(mixed[0], out[0])
    assert not torch.allclose(mixed[1], out[1])
    # without timestep conditioning the time is optional
    untimed = make_unet(text_embed_dim=None, condition_on_timestep=False)
    assert untimed(video).shape == video.shape


def test_text_conditioning_masks_and_null_condition(make_unet):
    unet = make_unet()
    _perturb(unet, which="spatial", scale=0.05)  # make sure the text paths carry signal
    video = torch.randn(2, 3, 4, 8, 8)
    text = torch.randn(2, 3, 16)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = unet(video, 9, text_embeds=text, text_mask=mask)
    assert not torch.allclose(out, unet(video, 9, text_embeds=torch.randn(2, 3, 16), text_mask=mask))
    masked_changed = text.clone()
    masked_changed[0, 2] = 10.0
    torch.testing.assert_close(unet(video, 9, text_embeds=masked_changed, text_mask=mask), out)
    # dropping the text of every item is the unconditional (no text) path, whatever the text
    dropped = unet(video, 9, text_embeds=text, text_mask=mask, drop_text=torch.tensor([True, True]))
    torch.testing.assert_close(dropped, unet(video, 9))
    torch.testing.assert_close(dropped, unet(video, 9, text_embeds=text, cond_drop_prob=1.0))
    partly = unet(video, 9, text_embeds=text, text_mask=mask, drop_text=torch.tensor([False, True]))
    torch.testing.assert_close(partly[0], out[0])
    torch.testing.assert_close(partly[1], dropped[1])


def test_forward_with_cond_scale_is_classifier_free_guidance(make_unet):
    unet = make_unet()
    _perturb(unet, which="spatial", scale=0.05)
    video, text = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 16)
    cond = unet(video, 4, text_embeds=text)
    uncond = unet(video, 4, text_embeds=text, cond_drop_prob=1.0)
    torch.testing.assert_close(unet.forward_with_cond_scale(video, 4, cond_scale=1.0, text_embeds=text), cond)
    guided = unet.forward_with_cond_scale(video, 4, cond_scale=3.0, text_embeds=text)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_parameter_groups_and_freezing(make_unet):
    unet = make_unet()
    spatial = {id(p) for p in unet.spatial_parameters()}
    temporal = {id(p) for p in unet.temporal_parameters()}
    assert spatial and temporal and not spatial & temporal
    assert spatial | temporal == {id(p) for p in unet.parameters()}
    unet.freeze_spatial()
    assert all(not p.requires_grad for p in unet.spatial_parameters())
    assert all(p.requires_grad for p in unet.temporal_parameters())
    unet.freeze_spatial(False)
    assert all(p.requires_grad for p in unet.parameters())


def test_spatial_state_dict_loads_into_another_unet(make_unet):
    image_unet, video_unet = make_unet(), make_unet()
    _perturb(image_unet, which="spatial")
    _perturb(video_unet, which="temporal")
    own_temporal = {name: p.clone() for name, p in video_unet.named_parameters() if is_temporal_parameter(name)}
    video_unet.load_spatial_state_dict(image_unet.state_dict())
    image_params = dict(image_unet.named_parameters())
    for name, param in video_unet.named_parameters():
        expected = own_temporal[name] if is_temporal_parameter(name) else image_params[name]
        assert torch.equal(param, expected), name
    from synthesis_core.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="spatial weights do not fit"):
        make_unet(dim=16).load_spatial_state_dict(image_unet.state_dict())


def test_runs_under_bf16_autocast_and_backpropagates(make_unet):
    unet = make_unet()
    video, text = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 2, 16)
    reference = unet(video, 3, text_embeds=text)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(video, 3, text_embeds=text)
    assert out.dtype == torch.bfloat16
    assert (out.float() - reference).abs().mean() < 0.05 * reference.abs().mean() + 1e-3
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in unet.temporal_parameters())


def test_bad_inputs_raise_clear_errors(make_unet):
    unet = make_unet(temporal_compression=(False, True))
    with pytest.raises(ValueError, match=r"frames must be divisible by 2.*got 3 frames"):
        unet(torch.randn(1, 3, 3, 8, 8), 1)
    assert unet(torch.randn(1, 3, 3, 8, 8), 1, enable_time=False).shape == (1, 3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, 3, \*, \*, \*\)"):
        unet(torch.randn(1, 4, 4, 8, 8), 1)
    with pytest.raises(ValueError, match="height and width must be divisible by 2"):
        unet(torch.randn(1, 3, 4, 7, 8), 1)
    with pytest.raises(ValueError, match="timestep: this U-Net was built with condition_on_timestep"):
        unet(torch.randn(1, 3, 4, 8, 8))
    with pytest.raises(ValueError, match=r"timestep: expected shape \(1,\)"):
        unet(torch.randn(1, 3, 4, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="text_embeds: expected shape"):
        unet(torch.randn(1, 3, 4, 8, 8), 1, text_embeds=torch.randn(1, 2, 7))
    with pytest.raises(ValueError, match="text_embeds: this U-Net was built without text_embed_dim"):
        make_unet(text_embed_dim=None)(torch.randn(1, 3, 4, 8, 8), 1, text_embeds=torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="cond: this U-Net takes 4 conditioning channels"):
        make_unet(cond_channels=4)(torch.randn(1, 3, 4, 8, 8), 1)
    with pytest.raises(ValueError, match="temporal_compression: the first level"):
        make_unet(temporal_compression=(True, True))
    with pytest.raises(ValueError, match="self_attns: expected one value or 2"):
        make_unet(self_attns=(True, False, True))


def test_per_level_defaults_follow_dim_mults(tmp_path):
    """`resnet_block_depths`, `self_attns` and `temporal_compression` default to one entry per level of `dim_mults`
    (2 blocks, attention on the last level, time halved below the first), so any depth builds without spelling them
    out; explicit values and configs saved with them still build the same network."""
    from make_a_video_pytorch import SpaceTimeUnet

    small = dict(dim=8, attn_dim_head=8, attn_heads=2)
    two_levels = SpaceTimeUnet(dim_mults=(1, 2), **small)
    assert [len(level["blocks"]) for level in two_levels.downs] == [2, 2]
    assert two_levels.temporal_compression == (False, True)
    spelled_out = SpaceTimeUnet(
        dim_mults=(1, 2),
        resnet_block_depths=(2, 2),
        self_attns=(False, True),
        temporal_compression=(False, True),
        **small,
    )
    assert [tuple(p.shape) for p in two_levels.parameters()] == [tuple(p.shape) for p in spelled_out.parameters()]
    assert two_levels(torch.rand(1, 3, 2, 8, 8), torch.tensor([3])).shape == (1, 3, 2, 8, 8)

    # the four-level default is the published one, and a config saved with explicit values loads as before
    four = SpaceTimeUnet(**small)
    assert [len(level["blocks"]) for level in four.downs] == [2, 2, 2, 2]
    published = SpaceTimeUnet(
        dim_mults=(1, 2, 4, 8),
        resnet_block_depths=(2, 2, 2, 2),
        self_attns=(False, False, False, True),
        temporal_compression=(False, True, True, True),
        **small,
    )
    assert [tuple(p.shape) for p in four.parameters()] == [tuple(p.shape) for p in published.parameters()]
    loaded = SpaceTimeUnet.from_pretrained(published.save_pretrained(tmp_path / "unet"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), published.state_dict().values()))
    with pytest.raises(ValueError, match="resnet_block_depths"):
        SpaceTimeUnet(dim_mults=(1, 2), resnet_block_depths=(2, 2, 2), **small)


def test_rmsnorm_matches_formula():
    x = torch.randn(2, 5, 16)
    rms = RMSNorm(16)
    with torch.no_grad():
        rms.gamma.uniform_(0.5, 1.5)
    expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * rms.gamma
    assert torch.allclose(rms(x), expected, atol=1e-5)
    assert [name for name, _ in rms.named_parameters()] == ["gamma"]
