"""Pseudo3DConv, SpatioTemporalAttention and the temporal resampling layers against naive references."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from make_a_video_pytorch import Pseudo3DConv, SpatioTemporalAttention
from make_a_video_pytorch.blocks import TemporalDownsample, TemporalUpsample


def _randomise_temporal(module):
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "temporal" in name:
                param.normal_(0, 0.3)


# -- Pseudo3DConv ------------------------------------------------------------------------------------------------


def test_pseudo3d_conv_matches_a_frame_by_frame_then_pixel_by_pixel_reference():
    conv = Pseudo3DConv(4, 6, kernel_size=3, temporal_kernel_size=3)
    _randomise_temporal(conv)
    video = torch.randn(2, 4, 5, 6, 6)

    spatial = torch.stack([conv.spatial_conv(video[:, :, t]) for t in range(5)], dim=2)
    reference = torch.empty_like(spatial)
    for y in range(6):
        for x in range(6):
            reference[..., y, x] = F.conv1d(
                spatial[..., y, x], conv.temporal_conv.weight, conv.temporal_conv.bias, padding=1
            )
    torch.testing.assert_close(conv(video), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(video, convolve_across_time=False), spatial, rtol=1e-5, atol=1e-5)


def test_pseudo3d_temporal_conv_starts_as_a_dirac_and_leaves_frames_unmixed():
    conv = Pseudo3DConv(4, kernel_size=3, temporal_kernel_size=5)
    weight = conv.temporal_conv.weight
    assert weight.shape == (4, 4, 5)
    expected = torch.zeros_like(weight)
    expected[torch.arange(4), torch.arange(4), 2] = 1.0
    assert torch.equal(weight, expected) and torch.equal(conv.temporal_conv.bias, torch.zeros(4))

    video = torch.randn(1, 4, 6, 5, 5)
    torch.testing.assert_close(conv(video), conv(video, convolve_across_time=False))
    # trained away from identity it mixes neighbouring frames only (kernel 5: two on each side)
    _randomise_temporal(conv)
    changed = video.clone()
    changed[:, :, 0] += 1.0
    difference = (conv(changed) - conv(video)).abs().amax(dim=(0, 1, 3, 4))
    assert (difference[:3] > 1e-4).all() and (difference[3:] == 0).all()


def test_pseudo3d_enable_time_is_an_alias():
    conv = Pseudo3DConv(4, kernel_size=3)
    _randomise_temporal(conv)
    video = torch.randn(1, 4, 3, 4, 4)
    torch.testing.assert_close(conv(video, enable_time=False), conv(video, convolve_across_time=False))
    torch.testing.assert_close(conv(video, enable_time=True), conv(video))
    with pytest.raises(ValueError, match="enable_time"):
        conv(video, convolve_across_time=False, enable_time=True)


def test_pseudo3d_images_skip_time_and_kernel_one_has_no_temporal_conv():
    conv = Pseudo3DConv(4, 8, kernel_size=1)
    assert conv.temporal_conv is None
    images = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(conv(images), conv.spatial_conv(images))


def test_pseudo3d_bad_input_and_arguments():
    conv = Pseudo3DConv(4)
    with pytest.raises(ValueError, match=r"x: expected 4 channels"):
        conv(torch.randn(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"x: expected a 4 or 5-dimensional"):
        conv(torch.randn(4, 4, 4))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        conv([1, 2, 3])
    with pytest.raises(ValueError, match="kernel_size"):
        Pseudo3DConv(4, kernel_size=2)
    with pytest.raises(ValueError, match="temporal_kernel_size"):
        Pseudo3DConv(4, temporal_kernel_size=4)


# -- SpatioTemporalAttention ---------------------------------------------------------------------------------------


def _naive_attention(module, tokens):
    """Pre-norm multi-head softmax attention of `tokens (n, d)` written out by hand, residual branch only."""
    attn = module.attn
    x = F.layer_norm(tokens, (tokens.shape[-1],), module.norm.gamma)
    q = attn.to_q(x)
    k, v = attn.to_kv(x).chunk(2, dim=-1)
    q, k, v = (rearrange(t, "n (h d) -> h n d", h=attn.heads) for t in (q, k, v))
    weights = (q @ k.transpose(-1, -2) * attn.dim_head**-0.5).softmax(dim=-1)
    return attn.to_out(rearrange(weights @ v, "h n d -> n (h d)"))


def test_spatio_temporal_attention_matches_a_naive_reference():
    attn = SpatioTemporalAttention(8, dim_head=4, heads=2, pos_bias=False, add_feed_forward=False)
    _randomise_temporal(attn)
    video = torch.randn(2, 8, 3, 2, 3)

    reference = video.clone()
    for b in range(2):
        for t in range(3):
            frame = rearrange(video[b, :, t], "c h w -> (h w) c")
            out = frame + _naive_attention(attn.spatial_attn, frame)
            reference[b, :, t] = rearrange(out, "(h w) c -> c h w", h=2)
    after_space = reference.clone()
    for b in range(2):
        for y in range(2):
            for x in range(3):
                frames = rearrange(after_space[b, :, :, y, x], "c t -> t c")
                out = frames + _naive_attention(attn.temporal_attn, frames)
                reference[b, :, :, y, x] = rearrange(out, "t c -> c t")
    torch.testing.assert_close(attn(video), reference, rtol=1e-4, atol=1e-5)


def test_temporal_attention_starts_as_identity_and_images_skip_it():
    attn = SpatioTemporalAttention(8, dim_head=4, heads=2)
    assert torch.equal(attn.temporal_attn.attn.to_out.weight, torch.zeros(8, 8))
    video = torch.randn(2, 8, 4, 3, 3)
    torch.testing.assert_close(attn(video), attn(video, attend_across_time=False))
    torch.testing.assert_close(attn(video, enable_time=False), attn(video, attend_across_time=False))
    # images: the spatial part of the video path, frame by frame
    per_frame = torch.stack([attn(video[:, :, t]) for t in range(4)], dim=2)
    torch.testing.assert_close(attn(video, attend_across_time=False), per_frame, rtol=1e-5, atol=1e-6)


def test_causal_time_attention_never_sees_later_frames():
    causal = SpatioTemporalAttention(8, dim_head=4, heads=2, causal_time_attn=True)
    _randomise_temporal(causal)
    video = torch.randn(1, 8, 5, 2, 2)
    changed = video.clone()
    changed[:, :, 3] += torch.randn(1, 8, 2, 2)  # not a constant shift: the layer norm would remove it
    difference = (causal(changed) - causal(video)).abs().amax(dim=(0, 1, 3, 4))
    assert (difference[:3] == 0).all() and (difference[3:] > 1e-4).all()

    full = SpatioTemporalAttention(8, dim_head=4, heads=2)
    _randomise_temporal(full)
    assert ((full(changed) - full(video)).abs().amax(dim=(0, 1, 3, 4))[:3] > 1e-4).all()


def test_position_bias_is_a_learned_function_of_offsets():
    attn = SpatioTemporalAttention(8, dim_head=4, heads=2, pos_bias=True)
    _randomise_temporal(attn)
    video = torch.randn(1, 8, 4, 2, 2)
    out = attn(video)
    with torch.no_grad():
        for param in attn.temporal_attn.pos_bias.parameters():
            param.add_(0.5)
    assert not torch.allclose(attn(video), out)


def test_attention_cross_attends_to_a_context():
    attn = SpatioTemporalAttention(8, dim_head=4, heads=2, dim_context=6, num_null_kv=1)
    video = torch.randn(2, 8, 2, 2, 2)
    context = torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = attn(video, context=context, context_mask=mask)
    assert not torch.allclose(out, attn(video, context=torch.randn(2, 3, 6), context_mask=mask))
    # masked tokens are ignored
    other = context.clone()
    other[0, 2] = 5.0
    other[1, 1:] = -5.0
    torch.testing.assert_close(attn(video, context=other, context_mask=mask), out)


def test_attention_bad_input():
    attn = SpatioTemporalAttention(8, dim_head=4, heads=2)
    with pytest.raises(ValueError, match="x: expected 8 channels"):
        attn(torch.randn(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="enable_time"):
        attn(torch.randn(1, 8, 2, 2, 2), attend_across_time=False, enable_time=True)


# -- temporal resampling -----------------------------------------------------------------------------------------


def test_temporal_down_and_upsampling_start_as_mean_and_repeat():
    down, up = TemporalDownsample(4), TemporalUpsample(4)
    video = torch.randn(2, 4, 6, 3, 3)
    torch.testing.assert_close(down(video), (video[:, :, 0::2] + video[:, :, 1::2]) / 2)
    torch.testing.assert_close(up(video), video.repeat_interleave(2, dim=2))
    static = video[:, :, :1].expand(-1, -1, 6, -1, -1)
    torch.testing.assert_close(up(down(static)), static)
