"""Motion diagnostics and the two keywords that make motion learnable: `frame_embedding` and `position_channels`.

A U-Net that runs every frame with the same time/text vector, and whose temporal layers see only distances between
frames, cannot draw the first frame differently from the last at high noise (where the noisy input says nothing
yet): it predicts the same blurred average for every frame, and the direction of motion is left to the noise. The
frame embedding (which frame of the clip, mixed with the conditioning vector) and the position channels (which pixel)
give it what it needs; the slow test checks that they are enough to learn a motion.
"""

import pytest
import torch

from make_a_video_pytorch import MakeAVideo, SpaceTimeUnet
from make_a_video_pytorch.blocks import is_temporal_parameter
from synthesis_core.testing import (
    assert_prediction_moves_right,
    clean_prediction_from_noise,
    shapes_moving,
    train_at_high_noise,
)

SIZE, FRAMES = 12, 6


def moving_right_videos(count: int) -> torch.Tensor:
    return shapes_moving("right", count, SIZE, FRAMES)


def high_noise_prediction(**unet_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Train on right-moving videos at high noise only; return the clean-video prediction from pure noise and the
    data it was trained on."""
    torch.manual_seed(0)
    unet = SpaceTimeUnet(
        dim=16,
        dim_mults=(1, 2),
        self_attns=(False, True),
        temporal_compression=(False, True),  # the frame embedding also reaches the level of halved frames
        resnet_block_depths=1,
        attn_dim_head=16,
        attn_heads=2,
        ff_mult=2,
        **unet_kwargs,
    )
    model = MakeAVideo(unet, image_size=SIZE, num_frames=FRAMES, timesteps=1000)
    data = moving_right_videos(96)
    train_at_high_noise(model, data)
    return clean_prediction_from_noise(model, (16, 3, FRAMES, SIZE, SIZE)), data


@pytest.mark.slow
def test_unconditional_model_trained_on_one_direction_predicts_that_motion():
    prediction, data = high_noise_prediction()
    assert_prediction_moves_right(prediction, data)


def test_without_the_keywords_the_network_is_the_earlier_one(make_unet):
    """`frame_embedding=False, position_channels=False` builds exactly the U-Net of make-a-video-pytorch 0.3: the
    same parameter names and shapes, so its checkpoints load, and its outputs."""
    old = make_unet(frame_embedding=False, position_channels=False)
    new = make_unet()
    assert not any("frame_embedding" in name for name in old.state_dict())
    assert old.init_conv.spatial_conv.in_channels == 3
    assert new.init_conv.spatial_conv.in_channels == 3 + 2
    # the new keys: the frame embedding, and two more input channels of the first convolution
    old_shapes = {k: tuple(v.shape) for k, v in old.state_dict().items()}
    new_shapes = {k: tuple(v.shape) for k, v in new.state_dict().items()}
    changed = {k for k in old_shapes if new_shapes[k] != old_shapes[k]}
    assert changed == {"init_conv.spatial_conv.weight"}
    assert {k.split(".")[0] for k in set(new_shapes) - set(old_shapes)} == {"temporal_frame_embedding"}
    assert all(is_temporal_parameter(k) for k in set(new_shapes) - set(old_shapes))

    # fresh, the frame embedding is the identity: with the same weights and zero position-channel kernels the two
    # compute the same function, on videos and on images
    state = old.state_dict()
    kernel = state["init_conv.spatial_conv.weight"]
    state["init_conv.spatial_conv.weight"] = torch.cat((kernel, kernel.new_zeros(kernel.shape[0], 2, 3, 3)), dim=1)
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("temporal_frame_embedding.") for k in missing)
    video, text = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 16)
    torch.testing.assert_close(new(video, 7, text_embeds=text), old(video, 7, text_embeds=text))
    torch.testing.assert_close(new(video[:, :, 0], 7, text_embeds=text), old(video[:, :, 0], 7, text_embeds=text))


def test_frame_embedding_gives_frames_their_own_conditioning_but_not_images(make_unet):
    unet = make_unet(temporal_compression=False)
    with torch.no_grad():
        for param in unet.temporal_frame_embedding.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    frame = torch.randn(2, 3, 1, 8, 8)
    static = frame.expand(-1, -1, 4, -1, -1)
    text = torch.randn(2, 3, 16)
    out = unet(static, 5, text_embeds=text)
    # the frames of a static video now differ (each knows its place in the clip) ...
    assert not torch.allclose(out[:, :, 0], out[:, :, -1], atol=1e-4)
    # ... while images and frame-by-frame runs see no frame embedding: exactly the image path
    image = unet(frame[:, :, 0], 5, text_embeds=text)
    frame_by_frame = unet(static, 5, text_embeds=text, enable_time=False)
    for t in range(4):
        torch.testing.assert_close(frame_by_frame[:, :, t], image)
    # a one-frame video is an image too
    torch.testing.assert_close(unet(frame, 5, text_embeds=text)[:, :, 0], image)
    # dropped text: the frame embedding acts on the learned null condition, the same as no text at all
    dropped = unet(static, 5, text_embeds=text, drop_text=torch.tensor([True, True]))
    torch.testing.assert_close(dropped, unet(static, 5))


def test_frame_embedding_without_time_or_text_conditioning(make_unet):
    unet = make_unet(text_embed_dim=None, condition_on_timestep=False, temporal_compression=False)
    video = torch.randn(1, 3, 4, 8, 8)
    # the vector is zero, and the frame embedding starts as the identity: videos run as their frames do
    torch.testing.assert_close(unet(video), unet(video, enable_time=False), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for param in unet.temporal_frame_embedding.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    assert not torch.allclose(unet(video), unet(video, enable_time=False), atol=1e-4)
    torch.testing.assert_close(unet(video[:, :, 0]), unet(video, enable_time=False)[:, :, 0])
    # without the frame embedding such a U-Net has no conditioning vector, as before
    plain = make_unet(text_embed_dim=None, condition_on_timestep=False, frame_embedding=False)
    assert not any("to_scale_shift" in name for name in plain.state_dict())


def test_save_and_load_keep_the_keywords(make_unet, tmp_path):
    for frame_embedding, position_channels in ((False, False), (True, False), (False, True)):
        unet = make_unet(frame_embedding=frame_embedding, position_channels=position_channels)
        assert unet.config["frame_embedding"] is frame_embedding
        assert unet.config["position_channels"] is position_channels
        loaded = SpaceTimeUnet.from_pretrained(
            unet.save_pretrained(tmp_path / f"{frame_embedding}-{position_channels}")
        )
        assert loaded.config["frame_embedding"] is frame_embedding
        assert loaded.config["position_channels"] is position_channels
        assert loaded.state_dict().keys() == unet.state_dict().keys()
        video, text = torch.randn(1, 3, 4, 8, 8), torch.randn(1, 2, 16)
        torch.testing.assert_close(loaded(video, 3, text_embeds=text), unet(video, 3, text_embeds=text))

    # through the diffusion model too, with trained (non-zero) frame-embedding weights
    model = MakeAVideo(make_unet(), image_size=8, num_frames=4, timesteps=100, text_encoder_name=None)
    with torch.no_grad():
        for param in model.unet.temporal_frame_embedding.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    loaded = MakeAVideo.from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert loaded.unet.config["frame_embedding"] is True and loaded.unet.config["position_channels"] is True
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_model_saved_before_the_keywords_loads_with_them_off(make_unet, tmp_path):
    """A folder of make-a-video-pytorch 0.3 (config without the two keywords, weights without the new parameters)
    loads as the model it holds: a missing keyword means off (`config_defaults_for_older_files`)."""
    import json

    model = MakeAVideo(
        make_unet(frame_embedding=False, position_channels=False), image_size=8, num_frames=4, timesteps=100
    )
    folder = model.save_pretrained(tmp_path / "old")
    document = json.loads((folder / "config.json").read_text())
    unet_config = document["config"]["unet"]["config"]
    del unet_config["frame_embedding"], unet_config["position_channels"]
    (folder / "config.json").write_text(json.dumps(document))

    loaded = MakeAVideo.from_pretrained(folder)
    assert loaded.unet.temporal_frame_embedding is None and not loaded.unet.position_channels
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # built in code, the U-Net gets today's defaults
    assert make_unet().temporal_frame_embedding is not None


def test_keywords_take_bools_only(make_unet):
    with pytest.raises(TypeError, match="frame_embedding: expected a bool"):
        make_unet(frame_embedding="yes")
    with pytest.raises(TypeError, match="position_channels: expected a bool"):
        make_unet(position_channels=1)


def test_paper_recipe_keeps_the_frame_embedding_temporal(make_unet):
    """Image pretraining never touches the frame embedding; video fine-tuning with frozen spatial layers trains it."""
    unet = make_unet()
    names = [name for name, _ in unet.named_parameters() if "frame_embedding" in name]
    assert names and all(is_temporal_parameter(name) for name in names)
    unet.freeze_spatial()
    assert all(p.requires_grad for n, p in unet.named_parameters() if "frame_embedding" in n)
    video, text = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 16)
    unet(video, 3, text_embeds=text).square().mean().backward()
    assert unet.temporal_frame_embedding.motion.weight.grad.abs().sum() > 0
    unet.zero_grad()
    unet.freeze_spatial(False)
    unet(video[:, :, 0], 3, text_embeds=text).square().mean().backward()
    assert all(p.grad is None or not p.grad.any() for p in unet.temporal_frame_embedding.parameters())
