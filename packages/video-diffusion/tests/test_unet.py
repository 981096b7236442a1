"""Unet3D: frames meet only in temporal attention, focus-present, conditioning and guidance, variants, errors."""

import pytest
import torch

from video_diffusion_pytorch import Unet3D
from video_diffusion_pytorch.unet import _LinearAttention, _SpatialAttention, _TemporalAttention


def tiny_unet(**kwargs):
    kwargs = {"dim": 8, "dim_mults": (1, 2), "attn_heads": 2, "attn_dim_head": 8, **kwargs}
    return Unet3D(**kwargs).eval()


def videos(batch=2, frames=3, size=8):
    return torch.randn(batch, 3, frames, size, size)


def max_change(a, b):
    return (a - b).abs().amax().item()


def test_output_shape_out_dim_and_float_times():
    unet = tiny_unet(out_dim=5)
    out = unet(videos(), torch.tensor([0, 7]))
    assert out.shape == (2, 5, 3, 8, 8)
    assert torch.isfinite(out).all()
    # float times (continuous schedules) and a scalar time broadcast to the batch work too
    assert unet(videos(), torch.tensor([0.25, 0.5])).shape == (2, 5, 3, 8, 8)
    assert unet(videos(), 3).shape == (2, 5, 3, 8, 8)


def test_temporal_layer_mixes_frames_but_not_pixels():
    layer = _TemporalAttention(8, heads=2, dim_head=8, pos_bias="t5")
    x = torch.randn(2 * 4, 8, 6, 6)  # ((batch frames), channels, h, w)
    perturbed = x.clone()
    perturbed[0, :, 2, 3] += torch.randn(8)  # batch 0, frame 0, one pixel (not a constant: norms remove those)
    out, out_perturbed = layer(x, frames=4), layer(perturbed, frames=4)
    changed = (out - out_perturbed).abs().amax(dim=1) > 1e-6  # ((b t), h, w)
    # every frame of video 0 moves at that pixel, nothing else moves anywhere
    assert changed[:4, 2, 3].all()
    changed[:4, 2, 3] = False
    assert not changed.any()


def test_temporal_layer_skip_mask_is_identity_per_item():
    layer = _TemporalAttention(8, heads=2, dim_head=8, pos_bias="t5")
    x = torch.randn(2 * 4, 8, 6, 6)
    out = layer(x, frames=4, skip_mask=torch.tensor([True, False]))
    torch.testing.assert_close(out[:4], x[:4], rtol=0, atol=0)
    assert max_change(out[4:], x[4:]) > 1e-4


@pytest.mark.parametrize("layer", [_LinearAttention(8, heads=2, dim_head=8), _SpatialAttention(8, heads=2, dim_head=8)])
def test_spatial_layers_mix_pixels_within_a_frame_only(layer):
    x = torch.randn(2 * 3, 8, 4, 4)
    perturbed = x.clone()
    perturbed[0, :, 0, 0] += torch.randn(8)
    out, out_perturbed = layer(x), layer(perturbed)
    delta = (out - out_perturbed).abs().amax(dim=1)
    assert (delta[0] > 1e-6).all()  # the whole perturbed frame sees the pixel
    assert delta[1:].amax() == 0  # no other frame does


def test_perturbing_one_frame_reaches_others_only_through_temporal_attention():
    unet = tiny_unet()
    x, t = videos(), torch.tensor([1, 5])
    perturbed = x.clone()
    perturbed[:, :, 0] += torch.randn_like(perturbed[:, :, 0])
    out, out_perturbed = unet(x, t), unet(perturbed, t)
    assert max_change(out[:, :, 1:], out_perturbed[:, :, 1:]) > 1e-4

    # focus on the present for video 0 only: its other frames are untouched, video 1's still move
    mask = torch.tensor([True, False])
    out, out_perturbed = unet(x, t, focus_present_mask=mask), unet(perturbed, t, focus_present_mask=mask)
    assert max_change(out[0, :, 1:], out_perturbed[0, :, 1:]) < 1e-6
    assert max_change(out[1, :, 1:], out_perturbed[1, :, 1:]) > 1e-4
    assert max_change(out[0, :, 0], out_perturbed[0, :, 0]) > 1e-4


def test_focus_present_equals_frames_run_as_images():
    unet = tiny_unet()
    x, t = videos(batch=1), torch.tensor([4])
    focused = unet(x, t, focus_present_mask=torch.tensor([True]))
    torch.testing.assert_close(unet(x, t, prob_focus_present=1.0), focused)
    for frame in range(3):
        single = unet(x[:, :, frame : frame + 1], t)  # one-frame input: temporal attention skipped
        torch.testing.assert_close(single[:, :, 0], focused[:, :, frame], atol=1e-5, rtol=1e-4)


def test_condition_dropout_and_null_condition():
    unet = tiny_unet(cond_dim=6)
    x, t = videos(), torch.tensor([2, 3])
    cond, other = torch.randn(2, 6), torch.randn(2, 6)
    assert max_change(unet(x, t, cond=cond), unet(x, t, cond=other)) > 1e-4
    dropped = unet(x, t, cond=cond, null_cond_prob=1.0)
    torch.testing.assert_close(dropped, unet(x, t, cond=other, null_cond_prob=1.0))
    torch.testing.assert_close(dropped, unet(x, t))  # no condition = the learned null condition
    mixed = unet(x, t, cond=cond, null_cond_mask=torch.tensor([True, False]))
    torch.testing.assert_close(mixed[0], dropped[0])
    torch.testing.assert_close(mixed[1], unet(x, t, cond=cond)[1])


def test_forward_with_cond_scale_is_classifier_free_guidance():
    unet = tiny_unet(cond_dim=6)
    x, t, cond = videos(), torch.tensor([2, 3]), torch.randn(2, 6)
    conditional = unet(x, t, cond=cond)
    unconditional = unet(x, t, cond=cond, null_cond_prob=1.0)
    torch.testing.assert_close(unet.forward_with_cond_scale(x, t, cond=cond, cond_scale=1.0), conditional)
    guided = unet.forward_with_cond_scale(x, t, cond=cond, cond_scale=3.0)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5, rtol=1e-4)


def test_variants_train_and_run_under_bf16_autocast():
    for kwargs in (
        {"block_type": "convnext"},
        {"time_pos_bias": "rotary"},
        {"time_pos_bias": "continuous"},
        {"use_sparse_linear_attn": False, "init_dim": 16, "init_kernel_size": 3},
    ):
        unet = tiny_unet(**kwargs).train()
        unet(videos(), torch.tensor([1, 2])).square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in unet.parameters() if p.grad is not None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_unet(cond_dim=4)(videos(), torch.tensor([1, 2]), cond=torch.randn(2, 4))
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("mode", [True, "attention"])
def test_gradient_checkpointing_gives_the_same_gradients(mode):
    plain = tiny_unet().train()
    checkpointed = tiny_unet(gradient_checkpointing=mode).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t = videos(), torch.tensor([1, 2])
    mask = torch.tensor([True, False])
    for unet in (plain, checkpointed):
        unet(x, t, focus_present_mask=mask).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_save_and_load_pretrained_round_trip(tmp_path):
    unet = tiny_unet(cond_dim=4, block_type="convnext")
    unet.save_pretrained(tmp_path / "unet")
    loaded = Unet3D.from_pretrained(tmp_path / "unet").eval()
    x, t, cond = videos(), torch.tensor([1, 2]), torch.randn(2, 4)
    torch.testing.assert_close(loaded(x, t, cond=cond), unet(x, t, cond=cond), rtol=0, atol=0)


def test_bert_text_condition(tiny_bert):
    unet = tiny_unet(use_bert_text_cond=True, text_encoder_name=tiny_bert)
    assert unet.cond_dim == 16  # the width of the local BERT
    captions = ["a red square moving left", "a blue circle moving right"]
    mean = unet.embed_text(captions)
    cls = unet.embed_text(captions, use_cls=True)
    assert mean.shape == cls.shape == (2, 16)
    assert max_change(mean, cls) > 1e-4
    x, t = videos(), torch.tensor([1, 2])
    torch.testing.assert_close(unet(x, t, cond=captions), unet(x, t, cond=mean))
    assert not any("bert" in key.lower() or "text_encoder" in key for key in unet.state_dict())


def test_bad_inputs_raise_clear_errors(tiny_bert):
    unet = tiny_unet(cond_dim=6)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="x: expected shape"):
        unet(torch.randn(2, 4, 3, 8, 8), t)
    with pytest.raises(ValueError, match="x: expected shape"):
        unet(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match="multiples of 2"):
        unet(torch.randn(2, 3, 3, 9, 9), t)
    with pytest.raises(ValueError, match="time"):
        unet(videos(), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="cond: expected shape"):
        unet(videos(), t, cond=torch.randn(2, 5))
    with pytest.raises(ValueError, match="cond: expected a batch of 2"):
        unet(videos(), t, cond=torch.randn(3, 6))
    with pytest.raises(ValueError, match="use_bert_text_cond"):
        unet(videos(), t, cond=["a", "b"])
    with pytest.raises(ValueError, match="focus_present_mask"):
        unet(videos(), t, focus_present_mask=torch.tensor([True]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_unet()(videos(), t, cond=torch.randn(2, 6))
    with pytest.raises(ValueError, match="block_type"):
        tiny_unet(block_type="transformer")
    with pytest.raises(ValueError, match="init_kernel_size"):
        tiny_unet(init_kernel_size=4)
    with pytest.raises(ValueError, match="cond_dim"):
        tiny_unet(use_bert_text_cond=True, text_encoder_name=tiny_bert, cond_dim=32)
    with pytest.raises(TypeError, match="cond"):
        tiny_unet(use_bert_text_cond=True, text_encoder_name=tiny_bert)(videos(), t, cond="one caption")


def test_channels_last_weights_match_contiguous():
    unet = tiny_unet(cond_dim=4)
    x, t, cond = videos(), torch.tensor([1, 2]), torch.randn(2, 4)
    expected = unet(x, t, cond=cond)
    unet.to(memory_format=torch.channels_last)
    torch.testing.assert_close(unet(x, t, cond=cond), expected, atol=1e-5, rtol=1e-4)
