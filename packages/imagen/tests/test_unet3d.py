"""Behaviour of the space-time U-Net: temporal mixing, ignore_time independence, causality, frame extrapolation,
temporal strides, conditioning frames, image inputs, casting and input errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imagen_pytorch.unet3d import Unet3D

torch.set_num_threads(1)

TEXT_DIM = 16


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), (actual - expected).abs().max().item()


def tiny_unet3d(**overrides) -> Unet3D:
    kwargs = dict(
        dim=8,
        dim_mults=(1, 2),
        cond_dim=16,
        text_embed_dim=TEXT_DIM,
        num_resnet_blocks=1,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
        attn_heads=2,
        attn_dim_head=8,
        max_text_len=8,
        attn_pool_num_latents=4,
        init_cross_embed_kernel_sizes=(3, 5),
    )
    kwargs.update(overrides)
    return Unet3D(**kwargs)


def as_if_trained(model: nn.Module) -> nn.Module:
    """Random weights for the zero-initialised output layers (final conv, temporal attention outputs, ...) and a
    perturbation of the identity-initialised temporal convolutions, as training would give."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim > 0 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            elif name.endswith("temporal.conv.weight"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def video_inputs(batch=2, frames=4, size=8, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 3, frames, size, size, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, tokens, TEXT_DIM, generator=g),
    )


def changed_frames(out_a, out_b, atol=1e-5):
    """Indices of the frames (dim 2) where two outputs differ."""
    diff = (out_a - out_b).abs().amax(dim=(0, 1, 3, 4))
    return [i for i, d in enumerate(diff.tolist()) if d > atol]


def test_fresh_unet3d_is_the_image_unet_per_frame():
    # temporal convolutions start as the identity and temporal attention outputs start at zero
    unet = tiny_unet3d()
    with torch.no_grad():
        unet.final_conv.weight.normal_(std=0.1)
    x, t, text = video_inputs()
    assert_close(unet(x, t, text_embeds=text), unet(x, t, text_embeds=text, ignore_time=True))


def test_temporal_layers_mix_frames_and_ignore_time_keeps_them_independent():
    unet = as_if_trained(tiny_unet3d())
    x, t, text = video_inputs(frames=4)
    perturbed = x.clone()
    perturbed[:, :, 1] += torch.randn_like(perturbed[:, :, 1])

    mixed = changed_frames(unet(x, t, text_embeds=text), unet(perturbed, t, text_embeds=text))
    assert mixed == [0, 1, 2, 3]

    independent_a = unet(x, t, text_embeds=text, ignore_time=True)
    independent_b = unet(perturbed, t, text_embeds=text, ignore_time=True)
    assert changed_frames(independent_a, independent_b) == [1]
    # and each frame is exactly what the network gives for that frame alone as an image
    for frame in range(4):
        assert_close(independent_a[:, :, frame], unet(x[:, :, frame], t, text_embeds=text), atol=1e-5)


def test_time_causal_attention_never_looks_ahead():
    unet = as_if_trained(tiny_unet3d(time_causal_attn=True))
    x, t, text = video_inputs(frames=5)
    perturbed = x.clone()
    perturbed[:, :, 2] += torch.randn_like(perturbed[:, :, 2])
    assert changed_frames(unet(x, t, text_embeds=text), unet(perturbed, t, text_embeds=text)) == [2, 3, 4]


def test_frame_extrapolation_after_training_on_fewer_frames():
    torch.manual_seed(0)
    unet = tiny_unet3d(layer_attns=False, attn_pool_text=False)
    x, t, text = video_inputs(frames=4)
    noise = torch.randn_like(x)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(unet(x + noise, t, text_embeds=text), noise)
        unet.zero_grad()
        loss.backward()
        with torch.no_grad():  # plain SGD by hand (torch.optim's first use imports torch._dynamo: seconds)
            for param in unet.parameters():
                if param.grad is not None:
                    param.sub_(0.3 * param.grad)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    unet.eval()
    longer, _, _ = video_inputs(frames=6, seed=1)
    out = unet(longer, t, text_embeds=text)
    assert out.shape == (2, 3, 6, 8, 8) and torch.isfinite(out).all()
    # the temporal attention is active on the unseen length: the frames are not processed independently
    assert not torch.allclose(out, unet(longer, t, text_embeds=text, ignore_time=True), atol=1e-6)


def test_temporal_strides():
    unet = as_if_trained(tiny_unet3d(temporal_strides=(2, 1)))
    x, t, text = video_inputs(frames=4)
    out = unet(x, t, text_embeds=text)
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(torch.randn(2, 3, 3, 8, 8), t, text_embeds=text)
    # frames that are never mixed need no divisibility
    assert unet(torch.randn(2, 3, 3, 8, 8), t, text_embeds=text, ignore_time=True).shape == (2, 3, 3, 8, 8)
    with pytest.raises(ValueError, match="temporal_strides"):
        tiny_unet3d(temporal_strides=(2, 2))


def test_conditioning_frames_are_known_frames():
    unet = as_if_trained(tiny_unet3d())
    x, t, text = video_inputs(frames=3)
    before, after = torch.randn(2, 3, 2, 8, 8), torch.randn(2, 3, 1, 8, 8)
    out = unet(x, t, text_embeds=text, cond_video_frames=before, post_cond_video_frames=after)
    assert out.shape == x.shape
    other = unet(x, t, text_embeds=text, cond_video_frames=before + 1, post_cond_video_frames=after)
    assert changed_frames(out, other) == [0, 1, 2]
    # ignoring time, the conditioning frames cannot influence the noisy ones
    independent = unet(x, t, text_embeds=text, cond_video_frames=before, ignore_time=True)
    assert_close(independent, unet(x, t, text_embeds=text, ignore_time=True))
    with pytest.raises(ValueError, match="cond_video_frames"):
        unet(x, t, text_embeds=text, cond_video_frames=torch.randn(2, 3, 2, 4, 4))


def test_images_text_guidance_and_lowres_conditioning():
    unet = as_if_trained(tiny_unet3d(cond_images_channels=1))
    x, t, text = video_inputs(frames=2)
    cond_image = torch.randn(2, 1, 4, 4)  # one image for every frame, resized
    images = x[:, :, 0]
    assert unet(images, t, text_embeds=text, cond_images=cond_image).shape == images.shape
    cond = unet(x, t, text_embeds=text, cond_images=cond_image)
    uncond = unet(x, t, text_embeds=text, cond_images=cond_image, cond_drop_prob=1.0)
    guided = unet.forward_with_cond_scale(x, t, text_embeds=text, cond_images=cond_image, cond_scale=4.0)
    assert_close(guided, uncond + 4.0 * (cond - uncond), atol=1e-5, rtol=1e-4)
    per_frame = unet(x, t, text_embeds=text, cond_images=cond_image[:, :, None].expand(-1, -1, 2, -1, -1))
    assert_close(per_frame, cond)

    sr = unet.cast_model_parameters(
        lowres_cond=True, text_embed_dim=TEXT_DIM, channels=3, channels_out=3, cond_on_text=True
    )
    assert type(sr) is Unet3D and sr.lowres_cond and sr.is_video
    assert sr.temporal_settings == unet.temporal_settings
    out = sr(x, t, text_embeds=text, cond_images=cond_image, lowres_cond_img=torch.rand_like(x), lowres_noise_times=t)
    assert out.shape == x.shape


def test_bf16_autocast_on_cpu():
    unet = as_if_trained(tiny_unet3d(temporal_strides=(2, 1)))
    x, t, text = video_inputs(frames=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet.forward_with_cond_scale(x, t, text_embeds=text, cond_scale=3.0)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape and torch.isfinite(out).all()


def test_bad_inputs_give_clear_errors():
    unet = tiny_unet3d()
    x, t, text = video_inputs()
    with pytest.raises(ValueError, match="text_embeds"):
        unet(x, t, text_embeds=torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(torch.randn(2, 3, 4, 7, 8), t, text_embeds=text)
    with pytest.raises(ValueError, match="x: expected a 4 or 5-dimensional tensor"):
        unet(torch.randn(2, 3, 8), t, text_embeds=text)
    with pytest.raises(ValueError, match="channels"):
        unet(torch.randn(2, 1, 4, 8, 8), t, text_embeds=text)
    with pytest.raises(ValueError, match="cond_images"):
        tiny_unet3d(cond_images_channels=2)(x, t, text_embeds=text, cond_images=torch.randn(2, 2, 3, 8, 8))
