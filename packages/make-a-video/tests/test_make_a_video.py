"""MakeAVideo and FrameInterpolator: training, the image -> video recipe, sampling, guidance, interpolation."""

import pytest
import torch
import torch.nn.functional as F

from make_a_video_pytorch import FrameInterpolator, MakeAVideo
from synthesis_core.diffusion import pred_to_x0, sample_vp, sampling_times, static_threshold


def _videos(batch=2, frames=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=g)


def _train(model, batches, steps, lr=3e-3):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    for step in range(steps):
        pixels, kwargs = batches[step % len(batches)]
        loss = model(pixels, **kwargs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_loss_falls_when_overfitting_one_batch(make_model):
    model = make_model(cond_drop_prob=0.0)
    # smooth videos at high noise levels: the x0 part of the v target is learnt within a few steps
    videos = F.interpolate(_videos(frames=4, size=2), size=(4, 8, 8), mode="trilinear")
    text = torch.randn(2, 3, 16)
    noise, times = torch.randn(2, 3, 4, 8, 8), torch.tensor([70, 90])
    batch = {"text_embeds": text, "noise": noise, "times": times}
    before = model(videos, **batch).item()
    _train(model, [(videos, batch)], steps=12)
    after = model(videos, **batch).item()
    assert after < 0.6 * before, (before, after)


def test_image_training_then_video_model_gives_per_frame_image_outputs(make_model, make_unet):
    image_model = make_model(unet=make_unet(temporal_compression=False))
    temporal_before = [p.clone() for p in image_model.unet.temporal_parameters()]
    spatial_before = [p.clone() for p in image_model.unet.spatial_parameters()]
    images, text = _videos(frames=4)[:, :, 0], torch.randn(2, 3, 16)
    _train(image_model, [(images, {"text_embeds": text})], steps=3)
    # images train the spatial layers only
    assert all(torch.equal(a, b) for a, b in zip(image_model.unet.temporal_parameters(), temporal_before))
    assert any(not torch.equal(a, b) for a, b in zip(image_model.unet.spatial_parameters(), spatial_before))

    video_model = MakeAVideo.from_image_model(image_model, num_frames=4)
    assert video_model.num_frames == 4 and video_model.image_size == (8, 8)
    assert video_model.unet is not image_model.unet
    video, times = _videos(seed=1), torch.tensor([3, 70])
    with torch.no_grad():
        video_out = video_model.unet(video, times, text_embeds=text)
        for t in range(4):
            image_out = image_model.unet(video[:, :, t], times, text_embeds=text)
            torch.testing.assert_close(video_out[:, :, t], image_out, rtol=1e-5, atol=1e-5)


def test_from_image_model_with_temporal_compression_on_static_videos(make_model):
    image_model = make_model()
    with torch.no_grad():
        for p in image_model.unet.spatial_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    video_model = MakeAVideo.from_image_model(image_model, num_frames=8)
    frame, text = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 16)
    static = frame[:, :, None].expand(-1, -1, 8, -1, -1)
    with torch.no_grad():
        out = video_model.unet(static, 5, text_embeds=text)
        image_out = image_model.unet(frame, 5, text_embeds=text)
    for t in range(8):
        torch.testing.assert_close(out[:, :, t], image_out, rtol=1e-5, atol=1e-5)


def test_freeze_spatial_keeps_spatial_weights_through_a_video_step(make_model):
    image_model = make_model()
    model = MakeAVideo.from_image_model(image_model, freeze_spatial=True)
    spatial = {n: p.clone() for n, p in model.unet.named_parameters() if p in set(model.unet.spatial_parameters())}
    temporal = [p.clone() for p in model.unet.temporal_parameters()]
    _train(model, [(_videos(), {"text_embeds": torch.randn(2, 3, 16)})], steps=2)
    for name, param in model.unet.named_parameters():
        if name in spatial:
            assert torch.equal(param, spatial[name]), name
    assert any(not torch.equal(a, b) for a, b in zip(model.unet.temporal_parameters(), temporal))


def test_sample_shapes_range_and_determinism(make_model):
    model = make_model()
    text = torch.randn(2, 3, 16)
    videos = model.sample(text_embeds=text, cond_scale=3.0, generator=torch.Generator().manual_seed(1), progress=False)
    assert videos.shape == (2, 3, 4, 8, 8)
    assert videos.min() >= 0 and videos.max() <= 1
    again = model.sample(text_embeds=text, cond_scale=3.0, generator=torch.Generator().manual_seed(1), progress=False)
    torch.testing.assert_close(videos, again)
    longer = model.sample(text_embeds=text[:1], num_frames=8, sampler="ddim", steps=2, progress=False)
    assert longer.shape == (1, 3, 8, 8, 8)
    unconditional = model.sample(batch_size=3, sampler="ddpm", steps=2, progress=False)
    assert unconditional.shape == (3, 3, 4, 8, 8)
    assert model.training  # sampling restores the mode


def test_cond_scale_one_samples_the_conditional_prediction(make_model):
    model = make_model().eval()
    text = torch.randn(2, 3, 16)
    batches = []
    original_forward = model.unet.forward

    def recording_forward(x, *args, **kwargs):
        batches.append(x.shape[0])
        return original_forward(x, *args, **kwargs)

    model.unet.forward = recording_forward
    out = model.sample(text_embeds=text, cond_scale=1.0, generator=torch.Generator().manual_seed(3), progress=False)
    assert batches == [2, 2, 2]  # one conditional pass per step, no unconditional batch

    # the same trajectory written out with the plain conditional U-Net call
    schedule = model.schedule

    def denoise(x_t, time):
        pred = original_forward(x_t, time, text_embeds=text, cond_drop_prob=0.0)
        alpha, sigma = schedule.alpha_sigma(time)
        return static_threshold(pred_to_x0(pred, x_t, alpha, sigma, "v"))

    generator = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 3, 4, 8, 8, generator=generator)
    with torch.no_grad():
        reference = sample_vp(
            denoise, x_T, sampling_times(schedule, 3), schedule, sampler="dpmpp_2m", generator=generator, progress=False
        )
    torch.testing.assert_close(out, ((reference + 1) / 2).clamp(0, 1))

    batches.clear()
    guided = model.sample(text_embeds=text, cond_scale=4.0, generator=torch.Generator().manual_seed(3), progress=False)
    assert batches == [4, 4, 4]  # conditional and unconditional in one batch
    assert not torch.allclose(guided, out)


def test_bad_inputs_raise_clear_errors(make_model, make_unet):
    model = make_model()
    with pytest.raises(ValueError, match=r"videos_or_images: expected shape \(batch, 3, frames, 8, 8\)"):
        model(torch.rand(2, 4, 4, 8, 8))
    with pytest.raises(ValueError, match=r"videos_or_images: expected shape \(batch, 3, 8, 8\)"):
        model(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"videos_or_images: expected pixel values in \[0, 1\].*divided by 255"):
        model(torch.rand(2, 3, 4, 8, 8) * 255)
    with pytest.warns(UserWarning, match="videos_or_images: pixel values outside \\[-1, 1\\] were clamped"):
        assert torch.isfinite(model(torch.randn(2, 3, 4, 8, 8)))  # read as [-1, 1], like every package
    with pytest.raises(ValueError, match="frames must be divisible by 2"):
        model(torch.rand(2, 3, 3, 8, 8))
    with pytest.raises(ValueError, match="batch sizes must match"):
        model(torch.rand(2, 3, 4, 8, 8), text_embeds=torch.randn(3, 2, 16))
    with pytest.raises(ValueError, match="texts: pass either texts or text_embeds"):
        model(torch.rand(2, 3, 4, 8, 8), texts=["a", "b"], text_embeds=torch.randn(2, 2, 16))
    with pytest.raises(ValueError, match="unconditional"):
        make_model(unet=make_unet(text_embed_dim=None))(torch.rand(1, 3, 4, 8, 8), text_embeds=torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="num_frames: expected a multiple of 2"):
        make_model(num_frames=3)
    with pytest.raises(ValueError, match="num_frames: expected a multiple of 2"):
        model.sample(num_frames=5, progress=False)
    with pytest.raises(ValueError, match="image_size: the height 7 must be divisible by 2"):
        make_model(image_size=(7, 8))
    with pytest.raises(ValueError, match="channels: the unet takes 3 channels"):
        make_model(channels=1)
    with pytest.raises(ValueError, match="text_embed_dim: the unet was built with text_embed_dim=16"):
        make_model(text_embed_dim=32)
    with pytest.raises(ValueError, match="sampler: expected one of"):
        model.sample(sampler="euler", progress=False)


def test_text_encoder_name_none_takes_precomputed_text_embeds(make_model, tmp_path):
    from synthesis_core.checkpoint import load_model_from_folder

    with_encoder = make_model()
    without = make_model(text_encoder_name=None)
    assert without.text_encoder is None and with_encoder.text_encoder is not None
    without.load_state_dict(with_encoder.state_dict())
    videos, text = _videos(), torch.randn(2, 3, 16)
    noise, times = torch.randn(2, 3, 4, 8, 8), torch.tensor([10, 60])
    # no encoder changes nothing for embeddings: the same loss and the same samples as the default model
    kwargs = dict(text_embeds=text, cond_drop_prob=0.0, noise=noise, times=times)
    torch.testing.assert_close(without(videos, **kwargs), with_encoder(videos, **kwargs))
    samples = [
        m.sample(text_embeds=text, generator=torch.Generator().manual_seed(3), progress=False)
        for m in (without, with_encoder)
    ]
    torch.testing.assert_close(samples[0], samples[1])
    with pytest.raises(ValueError, match=r"texts: this model has no text encoder.*pass precomputed text_embeds="):
        without(videos, texts=["a", "b"])
    with pytest.raises(ValueError, match=r"texts: this model has no text encoder"):
        without.sample(texts=["a whale"], progress=False)
    without.save_pretrained(tmp_path / "model")
    assert load_model_from_folder(tmp_path / "model").text_encoder is None


def test_save_pretrained_round_trip(make_model, tmp_path):
    from synthesis_core.checkpoint import load_model_from_folder

    model = make_model(freeze_spatial=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / "model")
    loaded = load_model_from_folder(tmp_path / "model")
    assert type(loaded) is MakeAVideo and loaded.num_frames == 4
    video, text = _videos(), torch.randn(2, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(video, 9, text_embeds=text), model.unet(video, 9, text_embeds=text))


# -- frame interpolation -----------------------------------------------------------------------------------------


def _interpolator(make_model, make_unet, **kwargs):
    unet = make_unet(cond_channels=4, temporal_compression=False)
    return make_model(unet=unet, cls=FrameInterpolator, num_frames=4, **kwargs)


def test_interpolation_keeps_the_given_keyframes(make_model, make_unet):
    interpolator = _interpolator(make_model, make_unet)
    video = torch.rand(2, 3, 2, 8, 8)
    text = torch.randn(2, 3, 16)
    out = interpolator.interpolate(video, factor=2, text_embeds=text, progress=False)
    assert out.shape == (2, 3, 4, 8, 8)
    assert torch.equal(out[:, :, ::2], video)
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[:, :, 1], out[:, :, 0])
    tripled = interpolator.interpolate(video[:, :, :1], factor=3, text_embeds=text, steps=2, progress=False)
    assert tripled.shape == (2, 3, 3, 8, 8) and torch.equal(tripled[:, :, 0], video[:, :, 0])


def test_interpolation_raises_the_frame_rate_of_a_sampled_video(make_model, make_unet):
    model = make_model()
    interpolator = _interpolator(make_model, make_unet)
    text = torch.randn(1, 3, 16)
    video = model.sample(text_embeds=text, num_frames=4, progress=False)
    smooth = interpolator.interpolate(video, factor=2, text_embeds=text, progress=False)
    assert smooth.shape == (1, 3, 8, 8, 8)
    assert torch.equal(smooth[:, :, ::2], video)


def test_interpolator_training_conditions_on_keyframes(make_model, make_unet):
    interpolator = _interpolator(make_model, make_unet, cond_drop_prob=0.0)
    videos, text = _videos(), torch.randn(2, 3, 16)
    keep = FrameInterpolator.keyframe_mask(2, 4, 2)
    assert keep[0, 0, :, 0, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    cond = FrameInterpolator.keyframe_condition(videos * 2 - 1, keep)
    assert cond.shape == (2, 4, 4, 8, 8)
    assert torch.equal(cond[:, :3, 1], torch.zeros(2, 3, 8, 8)) and torch.equal(cond[:, 3, 2], torch.ones(2, 8, 8))

    noise, times = torch.randn_like(videos), torch.tensor([10, 40])
    loss = interpolator(videos, text_embeds=text, factor=2, noise=noise, times=times)
    masked = interpolator(videos, text_embeds=text, keyframe_mask=keep[:, 0, :, 0, 0], noise=noise, times=times)
    torch.testing.assert_close(masked, loss)

    # reference: the v-prediction error over the frames to fill in only, min-SNR weighted
    schedule, x0 = interpolator.schedule, videos * 2 - 1
    alpha, sigma = (v.view(2, 1, 1, 1, 1) for v in schedule.alpha_sigma(times))
    pred = interpolator.unet(alpha * x0 + sigma * noise, times, text_embeds=text, cond=cond)
    per_item = ((pred - (alpha * noise - sigma * x0)) ** 2)[:, :, 1::2].mean(dim=(1, 2, 3, 4))
    snr = schedule.snr(times)
    reference = (per_item * snr.clamp(max=5.0) / (snr + 1)).mean()
    torch.testing.assert_close(loss, reference, rtol=1e-4, atol=1e-6)
    loss.backward()
    with pytest.raises(ValueError, match="cond_channels=4"):
        make_model(cls=FrameInterpolator)
    with pytest.raises(TypeError, match="interpolate"):
        interpolator.sample()
    with pytest.raises(ValueError, match="factor: expected an interpolation factor of at least 2"):
        interpolator.interpolate(torch.rand(1, 3, 2, 8, 8), factor=1)
