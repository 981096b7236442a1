"""Behaviour of the space-time U-Net: temporal mixing, ignore_time independence, causality, frame extrapolation,
temporal strides, conditioning frames, image inputs, casting and input errors."""

import json

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


# frame embedding and position channels (the motion diagnostics are in test_motion.py)


def test_without_the_keywords_the_architecture_is_the_older_one():
    old = tiny_unet3d(frame_embedding=False, position_channels=False)
    new = tiny_unet3d()
    assert old.frame_embedding is None and not any(key.startswith("frame_embedding.") for key in old.state_dict())
    assert all(conv.in_channels == 3 for conv in old.init_conv.convs)  # `channels`, nothing added
    assert all(conv.in_channels == 5 for conv in new.init_conv.convs)  # + row and column
    old_shapes = {key: value.shape for key, value in old.state_dict().items()}
    new_shapes = {key: value.shape for key, value in new.state_dict().items()}
    assert set(new_shapes) - set(old_shapes) == {key for key in new_shapes if key.startswith("frame_embedding.")}
    assert set(old_shapes) <= set(new_shapes)
    differing = {key for key in old_shapes if old_shapes[key] != new_shapes[key]}
    assert differing == {key for key in old_shapes if key.startswith("init_conv.") and key.endswith("weight")}

    # the new layers extend the old network exactly: its weights, zero for the position channels and the frame
    # embedding, give the same outputs
    as_if_trained(old)
    extended = old.state_dict()
    for key, value in new.state_dict().items():
        if key.startswith("frame_embedding."):
            extended[key] = torch.zeros_like(value)
        elif key in differing:
            extended[key] = F.pad(extended[key], (0, 0, 0, 0, 0, 2))  # (out, in, k, k): 2 more inputs, zero
    new.load_state_dict(extended)
    new.eval()
    x, t, text = video_inputs()
    assert torch.allclose(new(x, t, text_embeds=text), old(x, t, text_embeds=text), atol=1e-6)
    assert torch.allclose(new(x[:, :, 0], t, text_embeds=text), old(x[:, :, 0], t, text_embeds=text), atol=1e-6)


def test_frame_embedding_acts_on_videos_only():
    unet = as_if_trained(tiny_unet3d())
    x, t, text = video_inputs()
    before = {
        "video": unet(x, t, text_embeds=text),
        "image": unet(x[:, :, 0], t, text_embeds=text),
        "ignore_time": unet(x, t, text_embeds=text, ignore_time=True),
        "one_frame": unet(x[:, :, :1], t, text_embeds=text),
    }
    assert unet.frame_embedding is not None
    with torch.no_grad():
        for param in unet.frame_embedding.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    # a clip's frames get different FiLM vectors, images and independent frames the one they had
    assert not torch.allclose(unet(x, t, text_embeds=text), before["video"], atol=1e-4)
    assert torch.equal(unet(x[:, :, 0], t, text_embeds=text), before["image"])
    assert torch.equal(unet(x, t, text_embeds=text, ignore_time=True), before["ignore_time"])
    assert torch.equal(unet(x[:, :, :1], t, text_embeds=text), before["one_frame"])
    # guidance stays what it was: the dropped text's null hidden goes through the same frame embedding
    cond = unet(x, t, text_embeds=text)
    uncond = unet(x, t, text_embeds=text, cond_drop_prob=1.0)
    guided = unet.forward_with_cond_scale(x, t, text_embeds=text, cond_scale=3.0)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-4)
    # with temporal strides the merged frames get the mean of their vectors
    strided = as_if_trained(tiny_unet3d(temporal_strides=(2, 1)))
    out = strided(x, t, text_embeds=text)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("keywords", [{}, {"frame_embedding": False, "position_channels": False}])
def test_save_and_load_keep_the_keywords(tmp_path, keywords):
    unet = as_if_trained(tiny_unet3d(**keywords))
    unet.save_pretrained(tmp_path / "unet")
    loaded = Unet3D.from_pretrained(tmp_path / "unet").eval()
    for name in ("frame_embedding", "position_channels"):
        assert loaded.config[name] == keywords.get(name, True)
    assert loaded.missing_config_keys == ()
    x, t, text = video_inputs()
    assert torch.equal(loaded(x, t, text_embeds=text), unet(x, t, text_embeds=text))
    # and the one-file format of the published API
    unet.persist_to_file(tmp_path / "unet.safetensors")
    hydrated = Unet3D.hydrate_from_file(tmp_path / "unet.safetensors").eval()
    assert hydrated.config["frame_embedding"] == keywords.get("frame_embedding", True)
    assert torch.equal(hydrated(x, t, text_embeds=text), unet(x, t, text_embeds=text))


def test_a_unet_saved_before_the_keywords_loads_as_the_older_architecture(tmp_path):
    # a folder of imagen-pytorch 0.3: its config lacks both keywords, its weights are those of the older U-Net
    old = as_if_trained(tiny_unet3d(frame_embedding=False, position_channels=False))
    folder = old.save_pretrained(tmp_path / "old")
    document = json.loads((folder / "config.json").read_text())
    del document["config"]["frame_embedding"], document["config"]["position_channels"]
    (folder / "config.json").write_text(json.dumps(document))
    loaded = Unet3D.from_pretrained(folder).eval()
    assert loaded.config["frame_embedding"] is False and loaded.config["position_channels"] is False
    assert set(loaded.missing_config_keys) == {"frame_embedding", "position_channels"}
    x, t, text = video_inputs()
    assert torch.equal(loaded(x, t, text_embeds=text), old.eval()(x, t, text_embeds=text))
