"""NUWAVideoAudio (text -> video + audio tokens) and CrossModalityCrossAttention: what each token may see (by
perturbation), generation order against teacher forcing, a loss that falls, checkpoints, refused keywords."""

import pytest
import torch

from nuwa_pytorch import CrossModalityCrossAttention, NUWAVideoAudio

AUDIO_PER_FRAME = 3
VIDEO_PER_FRAME = 16  # the tiny VAE's 4 x 4 token grid


def make_model(make_vae, **kwargs) -> NUWAVideoAudio:
    settings = dict(
        dim=32,
        num_audio_tokens=12,
        num_audio_tokens_per_video_frame=AUDIO_PER_FRAME,
        max_video_frames=3,
        text_num_tokens=20,
        text_max_seq_len=6,
        text_enc_depth=1,
        text_enc_heads=2,
        text_enc_dim_head=8,
        dec_depth=2,
        dec_heads=2,
        dec_dim_head=8,
        cross_modality_attn_every=1,
    )
    settings.update(kwargs)
    return NUWAVideoAudio(vae=make_vae(), **settings)


def data(batch=2, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(1, 20, (batch, 6), generator=g),
        torch.randint(0, 32, (batch, frames * VIDEO_PER_FRAME), generator=g),
        torch.randint(0, 12, (batch, frames * AUDIO_PER_FRAME), generator=g),
    )


def test_cross_modality_visibility_analytic():
    # video queries (2 tokens per frame) over audio (3 per frame): a query of frame i sees the audio of frames < i
    attn = CrossModalityCrossAttention(dim=8, chunk_size=2, context_chunk_size=3, heads=1, dim_head=4)
    expected = torch.tensor([[j // 3 < p // 2 for j in range(7)] for p in range(6)])
    assert torch.equal(attn.visibility(6, 7), expected)
    # audio over video, its own frame included
    current = CrossModalityCrossAttention(
        dim=8, chunk_size=3, context_chunk_size=2, heads=1, dim_head=4, context_includes_current_chunk=True
    )
    expected = torch.tensor([[j // 2 <= p // 3 for j in range(4)] for p in range(6)])
    assert torch.equal(current.visibility(6, 4), expected)
    # with start positions outside the chunks: shifted by one, and the context's start position is never seen
    started = CrossModalityCrossAttention(
        dim=8,
        chunk_size=2,
        context_chunk_size=3,
        heads=1,
        dim_head=4,
        has_start_token=True,
        context_has_start_token=True,
    )
    expected = torch.tensor([[j > 0 and (j - 1) // 3 < (p - 1) // 2 for j in range(7)] for p in range(7)])
    assert torch.equal(started.visibility(7, 7), expected)
    out = started(torch.randn(1, 7, 8), torch.randn(1, 7, 8))
    assert out[0, 0].abs().sum() == 0 and out[0, 3:].abs().sum() > 0


def test_cross_modality_attention_follows_its_visibility_and_masks():
    torch.manual_seed(0)
    attn = CrossModalityCrossAttention(
        dim=8, chunk_size=2, context_chunk_size=3, heads=2, dim_head=4, norm=True, norm_context=True
    )
    seq, context = torch.randn(1, 6, 8), torch.randn(1, 7, 8)
    out = attn(seq, context)
    for j in range(7):
        changed = context.clone()
        changed[:, j] += torch.randn(8)  # not a constant shift: the context is layer-normed
        moved = (attn(seq, changed) - out).abs().amax(dim=-1)[0] > 1e-6
        assert torch.equal(moved, attn.visibility(6, 7)[:, j])
    # a hidden context token is as good as absent; a masked query position outputs zeros
    hidden = torch.ones(1, 7, dtype=torch.bool)
    hidden[0, 0] = False
    changed = context.clone()
    changed[:, 0] += torch.randn(8)
    torch.testing.assert_close(attn(seq, changed, context_mask=hidden), attn(seq, context, context_mask=hidden))
    query_mask = torch.tensor([[True] * 5 + [False]])
    assert attn(seq, context, mask=query_mask)[0, 5].abs().sum() == 0


def test_each_token_sees_only_what_generation_order_makes_known(make_vae):
    model = make_model(make_vae).eval()
    text, video, audio = data(batch=1)
    video_logits, audio_logits = model(text, video_indices=video, audio=audio)
    # generation order: video of frame f, then audio of frame f. Changing audio token a (frame a // 3) may only move
    # video predictions of later frames and audio predictions after a.
    for a in (0, 4, 8):
        changed = audio.clone()
        changed[0, a] = (changed[0, a] + 1) % 12
        v, au = model(text, video_indices=video, audio=changed)
        moved_video = (v - video_logits).abs().amax(dim=-1)[0] > 1e-5
        moved_audio = (au - audio_logits).abs().amax(dim=-1)[0] > 1e-5
        first_video_after = (a // AUDIO_PER_FRAME + 1) * VIDEO_PER_FRAME
        assert not moved_video[:first_video_after].any() and not moved_audio[: a + 1].any()
        if first_video_after < moved_video.shape[0]:
            assert moved_video[first_video_after:].any()
    # changing video token t (frame t // 16) may only move video predictions after t and audio of frames >= t // 16
    for t in (0, 20, 40):
        changed = video.clone()
        changed[0, t] = (changed[0, t] + 1) % 32
        v, au = model(text, video_indices=changed, audio=audio)
        moved_video = (v - video_logits).abs().amax(dim=-1)[0] > 1e-5
        moved_audio = (au - audio_logits).abs().amax(dim=-1)[0] > 1e-5
        first_audio_after = (t // VIDEO_PER_FRAME) * AUDIO_PER_FRAME
        assert not moved_video[: t + 1].any() and not moved_audio[:first_audio_after].any()
        assert moved_audio[first_audio_after:].any()


def test_greedy_generation_follows_the_teacher_forced_argmax(make_vae):
    model = make_model(make_vae).eval()
    text, _, _ = data(batch=2)
    video, audio = model.generate_indices(text, num_frames=2, temperature=0.0, progress=False)
    assert video.shape == (2, 2 * VIDEO_PER_FRAME) and audio.shape == (2, 2 * AUDIO_PER_FRAME)
    video_logits, audio_logits = model(text, video_indices=video, audio=audio)
    assert torch.equal(video_logits.argmax(dim=-1), video) and torch.equal(audio_logits.argmax(dim=-1), audio)


def test_generate_returns_both_modalities_reproducibly(make_vae):
    model = make_model(make_vae)
    text, _, _ = data(batch=2)
    runs = [
        model.generate(text, num_frames=2, cond_scale=2.0, generator=torch.Generator().manual_seed(1), progress=False)
        for _ in range(2)
    ]
    (video, audio), (video_again, audio_again) = runs
    assert video.shape == (2, 2, 3, 16, 16) and 0 <= video.min() and video.max() <= 1
    assert audio.shape == (2, 2 * AUDIO_PER_FRAME) and audio.dtype == torch.long and audio.max() < 12
    assert torch.equal(video, video_again) and torch.equal(audio, audio_again)
    assert model.training  # generation restores the mode


def test_loss_falls_when_fitting_one_clip_and_the_vae_stays_frozen(make_vae):
    torch.manual_seed(0)
    model = make_model(make_vae, cond_dropout_prob=0.0)
    text, video, audio = data(batch=2, frames=2)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(text, video_indices=video, audio=audio, return_loss=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert all(p.grad is None for p in model.vae.parameters())
    # the audio term is weighted by audio_loss_weight
    model.eval()
    video_only = make_model(make_vae, audio_loss_weight=0.0)
    video_only.load_state_dict(model.state_dict())
    video_only.eval()
    with torch.no_grad():
        assert video_only(text, video_indices=video, audio=audio, return_loss=True) < model(
            text, video_indices=video, audio=audio, return_loss=True
        )


def test_pixels_in_and_checkpoint_round_trip(make_vae, tmp_path):
    model = make_model(make_vae).eval()
    text, _, audio = data(batch=1, frames=2)
    pixels = torch.rand(1, 2, 3, 16, 16)
    indices = model.vae.get_video_indices(pixels)
    torch.testing.assert_close(model(text, pixels, audio=audio)[0], model(text, video_indices=indices, audio=audio)[0])
    model.save_pretrained(tmp_path / "va")
    loaded = NUWAVideoAudio.from_pretrained(tmp_path / "va").eval()
    torch.testing.assert_close(
        loaded(text, video_indices=indices, audio=audio)[1], model(text, video_indices=indices, audio=audio)[1]
    )
    torch.testing.assert_close(loaded.embed_text(text), model.embed_text(text))


def test_bad_inputs_and_refused_keywords(make_vae):
    model = make_model(make_vae)
    text, video, audio = data(batch=1, frames=2)
    with pytest.raises(ValueError, match="audio: expected 6 tokens"):
        model(text, video_indices=video, audio=audio[:, :5])
    with pytest.raises(ValueError, match="audio: expected the audio token ids"):
        model(text, video_indices=video)
    with pytest.raises(TypeError, match="audio: expected integer audio token ids"):
        model(text, video_indices=video, audio=audio.float())
    for keyword in (
        dict(dec_reversible=True),
        dict(text_rotary_pos_emb=False),
        dict(sparse_2dna_kernel_size=7),
        dict(sparse_3dna_rel_pos_bias=False),
    ):
        with pytest.raises(ValueError, match=next(iter(keyword))):
            make_model(make_vae, **keyword)
    with pytest.raises(ValueError, match="audio_tokens_per_timestep: 2 must divide"):
        make_model(make_vae, audio_tokens_per_timestep=2)
