"""NUWA: reversible = plain, cached generation = uncached, causality, frozen VAE, bf16, training signal, errors."""

import pytest
import torch

from nuwa_pytorch import NUWA
from nuwa_pytorch.nuwa import token_shift


def text_ids(batch=2, length=5, vocab=20):
    text = torch.randint(1, vocab, (batch, length))
    text[0, -2:] = 0  # padding
    return text


def test_reversible_and_plain_give_the_same_loss_and_gradients(make_vae, make_nuwa):
    vae = make_vae().eval()
    reversible = make_nuwa(vae=vae, dec_reversible=True, enc_reversible=True)
    plain = make_nuwa(vae=vae, dec_reversible=False, enc_reversible=False)
    assert reversible.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(reversible.state_dict())
    text, video = text_ids(), torch.rand(2, 3, 3, 16, 16)

    losses = []
    for model in (reversible, plain):
        model.train()
        losses.append(model(text, video, return_loss=True, cond_dropout_prob=0.0))
        losses[-1].backward()
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p_rev), p_plain in zip(reversible.named_parameters(), plain.parameters()):
        if p_rev.requires_grad:
            torch.testing.assert_close(p_rev.grad, p_plain.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_generation_with_kv_cache_equals_generation_without(make_nuwa, cond_scale):
    model = make_nuwa(max_video_frames=2)
    text = text_ids()
    runs = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        runs.append(
            model.generate_video_indices(
                text, cond_scale=cond_scale, filter_thres=0.5, use_cache=use_cache, generator=generator, progress=False
            )
        )
    assert runs[0].shape == (2, 2 * 16)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_greedy_cached_generation_follows_the_teacher_forced_argmax(make_nuwa):
    model = make_nuwa(max_video_frames=2).eval()
    text = text_ids()
    tokens = model.generate_video_indices(text, temperature=0.0, progress=False)
    logits = model(text, video_indices=tokens)
    torch.testing.assert_close(logits.argmax(dim=-1), tokens, rtol=0, atol=0)


def test_video_tokens_only_see_earlier_tokens(make_nuwa):
    model = make_nuwa(sparse_3dna_dilation=(1, 2)).eval()
    text = text_ids(batch=1)
    tokens = torch.randint(0, 32, (1, 48))
    logits = model(text, video_indices=tokens)
    for position in (0, 17, 40):
        perturbed = tokens.clone()
        perturbed[0, position] = (perturbed[0, position] + 1) % 32
        changed = (model(text, video_indices=perturbed) - logits).abs().amax(dim=-1)[0] > 1e-6
        # the logits at position p predict token p from tokens < p: positions <= p must not change
        assert not changed[: position + 1].any(), f"token {position} leaked into earlier predictions"
        if position + 1 < 48:
            assert changed[position + 1]


def test_generate_decodes_videos_through_the_vae(make_nuwa):
    model = make_nuwa()
    text = text_ids()
    generator = torch.Generator().manual_seed(0)
    video = model.generate(text, num_frames=2, generator=generator, decode_frames_per_batch=1, progress=False)
    assert video.shape == (2, 2, 3, 16, 16)
    assert video.min() >= 0 and video.max() <= 1
    tokens = model.generate_video_indices(
        text, num_frames=2, generator=torch.Generator().manual_seed(0), progress=False
    )
    torch.testing.assert_close(video, model.vae.codebook_indices_to_video(tokens))


def test_vae_is_frozen_and_video_equals_its_indices(make_nuwa):
    model = make_nuwa()
    vae_state = {k: v.clone() for k, v in model.vae.state_dict().items()}
    text, video = text_ids(), torch.rand(2, 2, 3, 16, 16)
    model.train()
    assert not model.vae.training
    loss = model(text, video, return_loss=True)
    loss.backward()
    assert all(p.grad is None for p in model.vae.parameters())
    for key, value in model.vae.state_dict().items():
        torch.testing.assert_close(value, vae_state[key], msg=key)
    model.eval()
    indices = model.vae.get_video_indices(video)
    torch.testing.assert_close(model(text, video), model(text, video_indices=indices))


def test_loss_falls_when_fitting_one_video(make_nuwa):
    model = make_nuwa(max_video_frames=1, dec_depth=1)
    text, indices = text_ids(batch=2), torch.randint(0, 32, (2, 16))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(text, video_indices=indices, return_loss=True, cond_dropout_prob=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bfloat16_autocast_training_and_generation(make_nuwa):
    model = make_nuwa(dec_reversible=True)
    text, video = text_ids(), torch.rand(2, 2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(text, video, return_loss=True)
        assert torch.isfinite(loss)
        loss.backward()
        tokens = model.generate_video_indices(text, num_frames=1, cond_scale=2.0, progress=False)
    assert tokens.shape == (2, 16)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_save_and_load_pretrained(make_nuwa, tmp_path):
    model = make_nuwa().eval()
    model.save_pretrained(tmp_path / "nuwa")
    loaded = NUWA.from_pretrained(tmp_path / "nuwa").eval()
    text, indices = text_ids(), torch.randint(0, 32, (2, 32))
    torch.testing.assert_close(loaded(text, video_indices=indices), model(text, video_indices=indices))


def test_bad_inputs(make_vae, make_nuwa):
    with pytest.raises(ValueError, match="image_size: 32 does not match the VAE's image_size 16"):
        make_nuwa(image_size=32)
    with pytest.raises(TypeError, match="vae: expected a VQGanVAE"):
        NUWA(vae=torch.nn.Linear(2, 2), dim=16)
    model = make_nuwa()
    text = text_ids()
    with pytest.raises(ValueError, match="video: expected between 1 and max_video_frames=3 frames, got 4"):
        model(text, torch.rand(2, 4, 3, 16, 16), return_loss=True)
    with pytest.raises(ValueError, match="text: 7 tokens exceed text_max_seq_len=6"):
        model(torch.ones(2, 7, dtype=torch.long), torch.rand(2, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="text: expected values in \\[0, 19\\]"):
        model(torch.full((2, 3), 20), torch.rand(2, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="video: expected shape \\(batch, frames, 3, 16, 16\\)"):
        model(text, torch.rand(2, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="batch sizes must match"):
        model(text, torch.rand(3, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="exactly one of video"):
        model(text)
    with pytest.raises(ValueError, match="num_frames: expected between 1 and max_video_frames=3"):
        model.generate(text, num_frames=4)


def make_sketch_model(make_vae, **kwargs):
    from nuwa_pytorch import NUWASketch

    settings = dict(
        dim=16,
        max_video_frames=2,
        sketch_max_video_frames=2,
        sketch_enc_depth=1,
        sketch_enc_heads=2,
        sketch_enc_dim_head=8,
        dec_depth=2,
        dec_heads=2,
        dec_dim_head=8,
        sparse_3dna_dilation=(1, 2),
    )
    settings.update(kwargs)
    return NUWASketch(vae=make_vae(), sketch_vae=make_vae(channels=1, vq_codebook_size=8), **settings)


def test_sketch_model_trains_and_generates_with_cache(make_vae, tmp_path):
    model = make_sketch_model(make_vae)
    sketch, video = torch.rand(2, 1, 1, 16, 16), torch.rand(2, 2, 3, 16, 16)
    loss = model(sketch, video, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in (*model.vae.parameters(), *model.sketch_vae.parameters()))
    assert model.sketch_token_emb.weight.grad.abs().sum() > 0

    runs = [
        model.generate_video_indices(
            sketch,
            num_frames=1,
            cond_scale=2.0,
            use_cache=use_cache,
            generator=torch.Generator().manual_seed(3),
            progress=False,
        )
        for use_cache in (True, False)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert model.generate(sketch, num_frames=1, progress=False).shape == (2, 1, 3, 16, 16)

    model.eval()
    model.save_pretrained(tmp_path / "sketch")
    loaded = type(model).from_pretrained(tmp_path / "sketch").eval()
    torch.testing.assert_close(loaded(sketch, video), model(sketch, video))


def test_sketch_model_bad_inputs(make_vae):
    model = make_sketch_model(make_vae)
    video = torch.rand(2, 2, 3, 16, 16)
    with pytest.raises(ValueError, match="sketch: expected shape \\(batch, sketch_frames, 1, 16, 16\\)"):
        model(torch.rand(2, 1, 3, 16, 16), video)
    with pytest.raises(ValueError, match="sketch: expected between 1 and sketch_max_video_frames=2 frames, got 3"):
        model(torch.rand(2, 3, 1, 16, 16), video)
    from nuwa_pytorch import NUWASketch

    with pytest.raises(TypeError, match="sketch_vae: expected a VQGanVAE"):
        NUWASketch(vae=make_vae(), sketch_vae=None, dim=16)


def test_token_shift_moves_channel_groups_by_one_step():
    x = torch.randn(2, 4, 3, 6)  # (b, t, n, d): two axes -> three groups of two channels
    out = token_shift(x, dims=(1, 2))
    assert torch.equal(out[:, 1:, :, 0:2], x[:, :-1, :, 0:2]) and out[:, 0, :, 0:2].eq(0).all()
    assert torch.equal(out[:, :, 1:, 2:4], x[:, :, :-1, 2:4]) and out[:, :, 0, 2:4].eq(0).all()
    assert torch.equal(out[..., 4:], x[..., 4:])
    with pytest.raises(ValueError, match="dims"):
        token_shift(x, dims=(3,))
