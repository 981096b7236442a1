"""The published make-a-video-pytorch 0.4 names: PseudoConv3d, ResnetBlock, Downsample, Upsample,
SpaceTimeUnet(dim_mult=..., flash_attn=...), SpatioTemporalAttention(flash=...)."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from make_a_video_pytorch import (
    Downsample,
    Pseudo3DConv,
    PseudoConv3d,
    ResnetBlock,
    SpaceTimeResnetBlock,
    SpaceTimeUnet,
    SpatioTemporalAttention,
    Upsample,
)
from make_a_video_pytorch.unet import is_temporal_parameter


def test_pseudo_conv3d_is_the_readme_layer_and_starts_as_a_per_frame_conv():
    assert PseudoConv3d is Pseudo3DConv
    conv = PseudoConv3d(4, 6, kernel_size=3, temporal_kernel_size=3)
    video = torch.randn(2, 4, 5, 8, 8)
    out = conv(video, enable_time=True)
    # the temporal half starts as the identity: the same as the spatial conv on every frame
    frames = torch.stack(
        [F.conv2d(video[:, :, t], conv.spatial_conv.weight, conv.spatial_conv.bias, padding=1) for t in range(5)], dim=2
    )
    torch.testing.assert_close(out, frames)


def test_resnet_block_takes_the_published_keywords_and_images():
    assert ResnetBlock is SpaceTimeResnetBlock
    block = ResnetBlock(4, 6, timestep_cond_dim=10)
    assert block.cond_dim == 10
    video, emb = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 10)
    by_alias = block(video, timestep_emb=emb)
    torch.testing.assert_close(by_alias, block(video, emb))
    # the conditioning changes the output (FiLM), and a video through enable_time=False is a batch of images
    assert not torch.allclose(by_alias, block(video, torch.randn(2, 10)))
    per_frame = block(video, emb, enable_time=False)
    images = block(rearrange(video, "b c t h w -> (b t) c h w"), emb.repeat_interleave(3, dim=0))
    torch.testing.assert_close(per_frame, rearrange(images, "(b t) c h w -> b c t h w", t=3), atol=1e-5, rtol=1e-5)


def test_resnet_block_refuses_conflicting_or_unusable_conditioning():
    with pytest.raises(ValueError, match="timestep_cond_dim"):
        ResnetBlock(4, 4, cond_dim=8, timestep_cond_dim=10)
    with pytest.raises(ValueError, match="cond_dim"):
        ResnetBlock(4, 4)(torch.randn(1, 4, 8, 8), torch.randn(1, 3))
    with pytest.raises(ValueError, match="timestep_emb"):
        ResnetBlock(4, 4, 3)(torch.randn(1, 4, 8, 8), torch.randn(1, 3), timestep_emb=torch.randn(1, 3))


def test_downsample_in_space_is_pixel_unshuffle_and_a_1x1_conv():
    down = Downsample(3)
    image = torch.randn(2, 3, 8, 8)
    conv = down.spatial_down.conv
    expected = F.conv2d(rearrange(image, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=2, p2=2), conv.weight, conv.bias)
    torch.testing.assert_close(down(image), expected)
    video = torch.randn(1, 3, 3, 8, 8)
    torch.testing.assert_close(down(video)[:, :, 1], down(video[:, :, 1]))  # space only: frames kept
    assert down(video).shape == (1, 3, 3, 4, 4)


def test_temporal_down_and_up_sampling_round_trip_at_initialisation():
    up, down = (
        Upsample(4, upsample_space=False, upsample_time=True),
        Downsample(4, downsample_space=False, downsample_time=True),
    )
    video = torch.randn(1, 4, 3, 6, 6)
    doubled = up(video)
    assert doubled.shape == (1, 4, 6, 6, 6)
    torch.testing.assert_close(doubled[:, :, ::2], video)  # nearest in time: each frame repeated
    torch.testing.assert_close(doubled[:, :, 1::2], video)
    torch.testing.assert_close(down(doubled), video)  # mean of each pair
    # images and enable_time=False skip time
    image = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(up(image), image)
    torch.testing.assert_close(down(video, enable_time=False), video)
    assert all(is_temporal_parameter(name) for name, _ in down.named_parameters())


def test_upsample_in_space_starts_as_nearest_neighbour_of_a_1x1_conv():
    up = Upsample(3, nonlin=True)
    image = torch.randn(2, 3, 4, 4)
    out = up(image)
    assert out.shape == (2, 3, 8, 8)
    # every 2x2 block of the output is one value: the 1x1 conv (+ SiLU) of the input pixel
    weight = up.spatial_up.weight[::4]
    expected = F.silu(F.conv2d(image, weight, up.spatial_up.bias[::4]))
    torch.testing.assert_close(out, F.interpolate(expected, scale_factor=2, mode="nearest"))
    # and it learns: a step on a loss moves it
    loss = (up(image) - 1).pow(2).mean()
    loss.backward()
    assert up.spatial_up.weight.grad.abs().sum() > 0
    # init_ (the published name) puts it back to a nearest-neighbour start after training moved it
    with torch.no_grad():
        up.spatial_up.weight.add_(torch.randn_like(up.spatial_up.weight))
    assert not torch.equal(up.spatial_up.weight[0], up.spatial_up.weight[1])
    up.init_()
    assert all(torch.equal(up.spatial_up.weight[0], up.spatial_up.weight[k]) for k in range(1, 4))
    with pytest.raises(ValueError, match="factor"):
        Upsample.init_conv_(torch.nn.Conv2d(3, 6, 1), 4)


def test_resampling_needs_something_to_do_and_even_frames():
    with pytest.raises(ValueError, match="downsample_space"):
        Downsample(4, downsample_space=False)
    with pytest.raises(ValueError, match="upsample_space"):
        Upsample(4, upsample_space=False)
    with pytest.raises(ValueError, match="even number"):
        Downsample(4, downsample_time=True)(torch.randn(1, 4, 3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        Upsample(4)(torch.randn(1, 5, 4, 4))


def test_space_time_unet_takes_dim_mult_and_flash_attn(tmp_path):
    settings = dict(
        dim=8,
        self_attns=(False, True),
        temporal_compression=(False, True),
        resnet_block_depths=1,
        attn_dim_head=8,
        attn_heads=2,
    )
    torch.manual_seed(0)
    published = SpaceTimeUnet(dim_mult=(1, 2), flash_attn=True, **settings)
    torch.manual_seed(0)
    ours = SpaceTimeUnet(dim_mults=(1, 2), **settings)
    video, t = torch.randn(1, 3, 2, 8, 8), torch.tensor([5])
    # the same network: the spelling and the kernel switch change nothing
    torch.testing.assert_close(published(video, t), ours(video, t))
    published.save_pretrained(tmp_path / "unet")
    loaded = SpaceTimeUnet.from_pretrained(tmp_path / "unet")
    torch.testing.assert_close(loaded(video, t), published(video, t))
    with pytest.raises(ValueError, match="dim_mult"):
        SpaceTimeUnet(dim_mults=(1, 2), dim_mult=(1, 4), **settings)
    with pytest.raises(TypeError, match="flash_attn"):
        SpaceTimeUnet(dim_mults=(1, 2), flash_attn="yes", **settings)


def test_spatio_temporal_attention_flash_is_the_same_attention():
    torch.manual_seed(0)
    flash = SpatioTemporalAttention(8, dim_head=4, heads=2, flash=True)
    torch.manual_seed(0)
    plain = SpatioTemporalAttention(8, dim_head=4, heads=2)
    video = torch.randn(1, 8, 3, 4, 4)
    torch.testing.assert_close(flash(video), plain(video))
    with pytest.raises(TypeError, match="flash"):
        SpatioTemporalAttention(8, flash=1)
