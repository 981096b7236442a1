"""Imagen and ElucidatedImagen through their public API: the samplers against an exact answer, the cascade,
inpainting, video, and the correctness points of issue 5 (offline construction, self-conditioning on x0,
identical low-res conditioning in training and sampling, CFG dropout, parameters(), no global text-encoder cache)."""

import gc
import socket
import weakref

import pytest
import torch

from imagen_pytorch import ElucidatedImagen, Imagen, NullUnet
from imagen_pytorch.cascade import random_crop, resize_image_to
from synthesis_core.diffusion import right_pad_dims_to

# pixels of the analytic stand-in's data: i.i.d. N(MU, S^2) in [-1, 1]
MU, S = 0.3, 0.2
TEXT_DIM = 16


def pixel_stats(images):
    values = images.double() * 2 - 1  # back to [-1, 1]
    return values.mean().item(), values.std().item()


# ---------------------------------------------------------------------------------------------------------------
# samplers against the exact answer


@pytest.mark.parametrize("sampler, steps", [("ddpm", 250), ("ddim", 100), ("dpmpp_2m", 25)])
def test_vp_samplers_reproduce_the_data_distribution(gaussian_unet, sampler, steps):
    imagen = Imagen(
        gaussian_unet(MU, S), image_sizes=16, condition_on_text=False, dynamic_thresholding=False, sampler=sampler
    )
    samples = imagen.sample(batch_size=32, steps=steps, use_tqdm=False)
    assert samples.shape == (32, 3, 16, 16)
    mean, std = pixel_stats(samples)
    assert abs(mean - MU) < 0.01, mean
    assert abs(std - S) < 0.05 * S, std


def test_default_sampler_is_dpm_solver_with_at_most_25_steps(recording_unet):
    unet = recording_unet()
    assert Imagen(unet, image_sizes=8, condition_on_text=False).sampler == "dpmpp_2m"
    Imagen(unet, image_sizes=8, condition_on_text=False, timesteps=1000).sample(use_tqdm=False)
    assert len(unet.calls) == 25
    unet.calls.clear()
    Imagen(unet, image_sizes=8, condition_on_text=False, timesteps=6).sample(use_tqdm=False)
    assert len(unet.calls) == 6


@pytest.mark.parametrize("sampler, steps", [("heun", 32), ("euler", 128)])
def test_edm_sampler_reproduces_the_data_distribution(gaussian_unet, sampler, steps):
    unet = gaussian_unet(MU, S, edm_sigma_data=0.5)
    imagen = ElucidatedImagen(
        unet,
        image_sizes=16,
        condition_on_text=False,
        dynamic_thresholding=False,
        num_sample_steps=steps,
        sampler=sampler,
        S_churn=0.0,
    )
    mean, std = pixel_stats(imagen.sample(batch_size=32, use_tqdm=False))
    assert abs(mean - MU) < 0.01, mean
    assert abs(std - S) < 0.05 * S, std


def test_init_images_and_skip_steps_start_from_the_given_images(gaussian_unet):
    imagen = Imagen(gaussian_unet(MU, S), image_sizes=8, condition_on_text=False, dynamic_thresholding=False)
    init = 0.55 + 0.2 * torch.rand(4, 3, 8, 8)  # inside the data's range
    nearly_done = imagen.sample(init_images=init, skip_steps=24, steps=25, use_tqdm=False)
    assert (nearly_done - init).abs().max() < 0.03
    from_scratch = imagen.sample(init_images=init, skip_steps=0, steps=25, use_tqdm=False)
    assert (from_scratch - init).abs().mean() > 0.05
    with pytest.raises(ValueError, match="skip_steps"):
        imagen.sample(init_images=init, skip_steps=25, steps=25, use_tqdm=False)


# ---------------------------------------------------------------------------------------------------------------
# the cascade


def test_cascade_of_three_unets_trains_each_stage_and_samples_through_all(tiny_unet):
    imagen = Imagen(
        (tiny_unet(), tiny_unet(), tiny_unet(layer_attns=False)),
        image_sizes=(8, 16, 32),
        text_embed_dim=TEXT_DIM,
        timesteps=10,
    )
    assert [unet.lowres_cond for unet in imagen.unets] == [False, True, True]
    images, embeds = torch.rand(2, 3, 32, 32), torch.randn(2, 4, TEXT_DIM)
    for number in (1, 2, 3):
        imagen.zero_grad()
        imagen(images, text_embeds=embeds, unet_number=number).backward()
        trained = [
            any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in unet.parameters()) for unet in imagen.unets
        ]
        assert trained == [n == number for n in (1, 2, 3)]

    outputs = imagen.sample(
        text_embeds=embeds, cond_scale=(3.0, 2.0, 1.0), steps=2, return_all_unet_outputs=True, use_tqdm=False
    )
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 8), (2, 3, 16, 16), (2, 3, 32, 32)]
    assert all(o.min() >= 0 and o.max() <= 1 for o in outputs)
    middle = imagen.sample(text_embeds=embeds, steps=2, stop_at_unet_number=2, use_tqdm=False)
    assert middle.shape == (2, 3, 16, 16)
    last = imagen.sample(
        text_embeds=embeds, steps=2, start_at_unet_number=3, start_image_or_video=middle, use_tqdm=False
    )
    assert last.shape == (2, 3, 32, 32)


def test_training_under_bf16_autocast_on_cpu(tiny_unet):
    imagen = Imagen((tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=TEXT_DIM, timesteps=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = imagen(torch.rand(2, 3, 16, 16), text_embeds=torch.randn(2, 4, TEXT_DIM), unet_number=2)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("cascade_class", [Imagen, ElucidatedImagen])
def test_inpainting_keeps_the_unmasked_pixels(tiny_unet, cascade_class):
    steps = dict(timesteps=10) if cascade_class is Imagen else dict(num_sample_steps=3)
    imagen = cascade_class((tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=TEXT_DIM, **steps)
    images = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True  # True: generate new content here
    out = imagen.sample(
        text_embeds=torch.randn(2, 4, TEXT_DIM),
        inpaint_images=images,
        inpaint_masks=masks,
        inpaint_resample_times=2,
        cond_scale=3.0,
        steps=3,
        use_tqdm=False,
    )
    keep = ~masks[:, None].expand_as(images)
    assert torch.allclose(out[keep], images[keep], atol=1e-5)
    assert (out[~keep] - images[~keep]).abs().mean() > 0.05


def test_random_crops_train_super_resolution_on_aligned_windows(recording_unet):
    sr = recording_unet()
    imagen = Imagen((NullUnet(), sr), image_sizes=(8, 16), random_crop_sizes=(None, 8), condition_on_text=False)
    imagen(torch.rand(4, 3, 16, 16), unet_number=2)
    assert sr.calls[-1]["x"].shape == sr.calls[-1]["lowres_cond_img"].shape == (4, 3, 8, 8)
    # the target and its condition are cropped at the same (per-sample) window
    target = torch.arange(4 * 16 * 16, dtype=torch.float).view(4, 1, 16, 16)
    cropped_target, cropped_cond, nothing = random_crop([target, target + 0.5, None], 8)
    assert torch.equal(cropped_cond, cropped_target + 0.5) and nothing is None
    offsets = cropped_target[:, 0, 0, 0] - torch.arange(4) * 256
    assert len(set(offsets.tolist())) > 1  # windows differ between samples


# ---------------------------------------------------------------------------------------------------------------
# video


def test_video_cascade_trains_on_videos_and_images_and_samples_videos(tiny_unet):
    imagen = Imagen(
        (tiny_unet(video=True), tiny_unet(video=True)),
        image_sizes=(8, 16),
        text_embed_dim=TEXT_DIM,
        timesteps=10,
        temporal_downsample_factor=(2, 1),
    )
    assert imagen.is_video
    embeds = torch.randn(2, 4, TEXT_DIM)
    for number in (1, 2):
        imagen(torch.rand(2, 3, 4, 16, 16), text_embeds=embeds, unet_number=number).backward()

    # images go through the video unet one frame at a time: its temporal layers get no gradient
    imagen.zero_grad()
    imagen(torch.rand(2, 3, 16, 16), text_embeds=embeds, unet_number=1).backward()
    grads = {name: p.grad for name, p in imagen.unets[0].named_parameters()}
    temporal = [g for name, g in grads.items() if ".temporal." in name]
    assert temporal and all(g is None or not bool(g.abs().sum() > 0) for g in temporal)
    assert any(g is not None and bool(g.abs().sum() > 0) for name, g in grads.items() if ".temporal." not in name)

    outputs = imagen.sample(text_embeds=embeds, video_frames=4, steps=2, return_all_unet_outputs=True, use_tqdm=False)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 2, 8, 8), (2, 3, 4, 16, 16)]
    with pytest.raises(ValueError, match="video_frames"):
        imagen.sample(text_embeds=embeds, steps=2, use_tqdm=False)


# ---------------------------------------------------------------------------------------------------------------
# correctness points of the issue


def test_self_conditioning_with_the_v_objective_feeds_x0_estimates(recording_unet):
    v_prediction = 0.3
    unet = recording_unet(value=v_prediction, self_cond=True)
    imagen = Imagen(unet, image_sizes=8, condition_on_text=False, pred_objectives="v", dynamic_thresholding=False)
    schedule = imagen.noise_schedules[0]

    def x0_estimate(call):
        alpha, sigma = schedule.alpha_sigma(call["time"])
        x = call["x"]
        return (right_pad_dims_to(x, alpha) * x - right_pad_dims_to(x, sigma) * v_prediction).clamp(-1, 1)

    # training: half of the time the unet first estimates x0 (no gradient) and gets it as self_cond
    images = torch.rand(4, 3, 8, 8)
    for _ in range(20):
        unet.calls.clear()
        imagen(images)
        if len(unet.calls) == 2:
            break
    first, second = unet.calls
    assert first["self_cond"] is None
    assert torch.allclose(second["self_cond"], x0_estimate(first), atol=1e-6)
    assert not torch.allclose(second["self_cond"], torch.full_like(first["x"], v_prediction))

    # sampling: each call gets the previous call's x0 estimate
    unet.calls.clear()
    imagen.sample(batch_size=2, steps=4, use_tqdm=False)
    assert unet.calls[0]["self_cond"] is None
    for previous, call in zip(unet.calls, unet.calls[1:]):
        assert torch.allclose(call["self_cond"], x0_estimate(previous), atol=1e-6)


@pytest.mark.parametrize("cascade_class", [Imagen, ElucidatedImagen])
def test_lowres_condition_is_normalised_then_noised_the_same_in_training_and_sampling(recording_unet, cascade_class):
    sr = recording_unet()
    imagen = cascade_class(
        (NullUnet(), sr), image_sizes=(8, 16), condition_on_text=False, lowres_sample_noise_level=0.3
    )
    images = torch.rand(8, 3, 16, 16)
    low = resize_image_to(images, 8)  # what the first stage would have produced, in [0, 1]
    clean = resize_image_to(low * 2 - 1, 16, mode="nearest")  # in [-1, 1], then upsampled

    def standardised_noise(call):
        alpha, sigma = imagen.lowres_noise_schedule.alpha_sigma(call["lowres_noise_times"])
        cond = call["lowres_cond_img"]
        return (cond - right_pad_dims_to(cond, alpha) * clean) / right_pad_dims_to(cond, sigma)

    imagen(images, unet_number=2)
    train_noise = standardised_noise(sr.calls[-1])
    sr.calls.clear()
    imagen.sample(start_at_unet_number=2, start_image_or_video=low, steps=2, use_tqdm=False)
    assert torch.allclose(sr.calls[0]["lowres_noise_times"], torch.full((8,), 0.3))
    sample_noise = standardised_noise(sr.calls[0])
    # in both, the condition is exactly alpha * clean + sigma * N(0, 1)
    for noise in (train_noise, sample_noise):
        assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05


def test_classifier_free_dropout_is_applied_in_training(recording_unet, tiny_unet):
    unet = recording_unet(cond_on_text=True)
    imagen = Imagen(unet, image_sizes=8, text_embed_dim=TEXT_DIM, cond_drop_prob=0.35)
    imagen(torch.rand(2, 3, 8, 8), text_embeds=torch.randn(2, 4, TEXT_DIM))
    assert unet.calls[-1]["cond_drop_prob"] == 0.35

    # with a real unet, dropping every condition trains the null path only: the text gets no gradient
    unet = tiny_unet(text_embed_dim=TEXT_DIM)
    with torch.no_grad():  # move off the zero-initialised output layers, which would block every input gradient
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for prob, uses_text in ((1.0, False), (0.0, True)):
        imagen = Imagen(unet, image_sizes=8, text_embed_dim=TEXT_DIM, cond_drop_prob=prob)
        embeds = torch.randn(2, 4, TEXT_DIM, requires_grad=True)
        imagen(torch.rand(2, 3, 8, 8), text_embeds=embeds).backward()
        assert (embeds.grad is not None and bool(embeds.grad.abs().sum() > 0)) == uses_text


def test_parameters_list_every_unet_and_nothing_else(tiny_unet, tiny_t5):
    imagen = Imagen((tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_encoder_name=tiny_t5, timesteps=10)
    imagen(torch.rand(2, 3, 16, 16), texts=["a whale", "a squirrel"], unet_number=1)  # loads the text encoder
    assert imagen.text_embed_dim == 16
    expected = {id(p) for unet in imagen.unets for p in unet.parameters()}
    assert {id(p) for p in imagen.parameters()} == expected
    assert all(len(list(unet.parameters())) > 0 for unet in imagen.unets)
    assert all(key.startswith("unets.") for key in imagen.state_dict())


@pytest.mark.parametrize("cascade_class", [Imagen, ElucidatedImagen])
def test_building_a_cascade_never_touches_the_network(monkeypatch, tiny_unet, cascade_class):
    def refuse(*args, **kwargs):
        raise AssertionError("network access while building the cascade")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    imagen = cascade_class((tiny_unet(), tiny_unet()), image_sizes=(8, 16))  # the default T5 v1.1 base
    assert imagen.text_embed_dim == 768
    assert all(unet.text_embed_dim == 768 for unet in imagen.unets)
    assert imagen.text_encoder.loaded_devices == []


def test_each_cascade_owns_its_text_encoder(tiny_unet, tiny_t5):
    def build():
        return Imagen(tiny_unet(), image_sizes=8, text_encoder_name=tiny_t5)

    first, second = build(), build()
    for imagen in (first, second):
        imagen(torch.rand(2, 3, 8, 8), texts=["a whale", "a squirrel"])
    assert first.text_encoder.model("cpu") is not second.text_encoder.model("cpu")
    released = weakref.ref(first.text_encoder.model("cpu"))
    del first, imagen
    gc.collect()
    assert released() is None  # nothing at module level kept the encoder alive


# ---------------------------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_raise_clear_errors(tiny_unet):
    unet = tiny_unet()
    imagen = Imagen((unet, tiny_unet()), image_sizes=(8, 16), text_embed_dim=TEXT_DIM, timesteps=10)
    images, embeds = torch.rand(2, 3, 16, 16), torch.randn(2, 4, TEXT_DIM)

    with pytest.raises(ValueError, match="images_or_video: expected height and width of at least 16"):
        imagen(torch.rand(2, 3, 8, 8), text_embeds=embeds, unet_number=2)
    with pytest.raises(ValueError, match="images_or_video: expected 3 channels"):
        imagen(torch.rand(2, 1, 16, 16), text_embeds=embeds, unet_number=1)
    with pytest.raises(ValueError, match="batch sizes must match"):
        imagen(torch.rand(3, 3, 16, 16), text_embeds=embeds, unet_number=1)
    with pytest.raises(ValueError, match="batch sizes must match"):
        imagen(images, texts=["only one caption"], unet_number=1)
    with pytest.raises(ValueError, match="text_embeds: expected shape"):
        imagen(images, text_embeds=torch.randn(2, 4, 8), unet_number=1)
    with pytest.raises(ValueError, match="pass texts"):
        imagen(images, unet_number=1)
    for number in (0, 3):
        with pytest.raises(ValueError, match=r"unet_number: expected a unet number in \[1, 2\]"):
            imagen(images, text_embeds=embeds, unet_number=number)
    with pytest.raises(ValueError, match="unet_number: required"):
        imagen(images, text_embeds=embeds)
    with pytest.raises(TypeError, match="images_or_video"):
        imagen(images.numpy(), text_embeds=embeds, unet_number=1)

    with pytest.raises(ValueError, match=r"inpaint_masks: expected shape \(2, 16, 16\)"):
        imagen.sample(text_embeds=embeds, inpaint_images=images, inpaint_masks=torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="inpaint_masks: required"):
        imagen.sample(text_embeds=embeds, inpaint_images=images)
    with pytest.raises(ValueError, match="start_image_or_video: required"):
        imagen.sample(text_embeds=embeds, start_at_unet_number=2)
    with pytest.raises(ValueError, match="cond_scale: expected one value per unet"):
        imagen.sample(text_embeds=embeds, cond_scale=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="stop_at_unet_number"):
        imagen.sample(text_embeds=embeds, stop_at_unet_number=3)
    with pytest.raises(ValueError, match="video_frames"):
        imagen.sample(text_embeds=embeds, video_frames=4)
    with pytest.raises(ValueError, match="sampler"):
        imagen.sample(text_embeds=embeds, sampler="euler")

    with pytest.raises(ValueError, match="image_sizes: expected one value per unet"):
        Imagen((unet, unet), image_sizes=(8, 16, 32))
    with pytest.raises(ValueError, match="image_sizes: expected non-decreasing"):
        Imagen((unet, unet), image_sizes=(16, 8))
    with pytest.raises(ValueError, match="pred_objectives|objective"):
        Imagen(unet, image_sizes=8, pred_objectives="score")
    unconditional = Imagen(unet, image_sizes=8, condition_on_text=False)
    with pytest.raises(ValueError, match="condition_on_text=False"):
        unconditional(torch.rand(2, 3, 8, 8), text_embeds=embeds)
    null_first = Imagen((NullUnet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=TEXT_DIM)
    with pytest.raises(ValueError, match="NullUnet"):
        null_first(images, text_embeds=embeds, unet_number=1)
    with pytest.raises(ValueError, match="NullUnet"):
        null_first.sample(text_embeds=embeds)
    with pytest.raises(ValueError, match="all image unets"):
        Imagen((unet, tiny_unet(video=True)), image_sizes=(8, 16))
