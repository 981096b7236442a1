"""Phenaki: training loss and condition dropout, sampling (primed, guided, critic), long videos, errors."""

import socket

import pytest
import torch

from phenaki_pytorch import MaskGit, Phenaki, StorySampler, TokenCritic, make_video


@pytest.fixture
def phenaki(make_cvivit, make_maskgit):
    """16x16 frames in 2x2 tokens: 5 frames -> 12 tokens; max_seq_len 64 holds 16 token frames (31 frames)."""
    return Phenaki(cvivit=make_cvivit(), maskgit=make_maskgit(), text_encoder_name=None, text_embed_dim=16, steps=4)


def test_training_loss_and_backward(phenaki, moving_squares):
    videos = moving_squares(num_videos=2)
    loss, breakdown = phenaki(videos, text_embeds=torch.randn(2, 5, 16), return_loss_breakdown=True)
    assert loss.ndim == 0 and torch.isfinite(loss) and breakdown.critic == 0
    loss.backward()
    assert all(p.grad is None for p in phenaki.cvivit.parameters())  # the tokenizer is frozen
    assert phenaki.maskgit.to_logits.weight.grad is not None
    # codebook ids (grid or flat) give the same loss as the videos they come from
    ids = phenaki.tokenize(videos)
    for given in (ids, ids.flatten(1)):
        torch.manual_seed(1)
        a = phenaki(video_codebook_ids=given, text_embeds=torch.ones(2, 5, 16))
        torch.manual_seed(1)
        b = phenaki(videos, text_embeds=torch.ones(2, 5, 16))
        torch.testing.assert_close(a, b)


def test_condition_dropout_is_really_applied_in_training(phenaki):
    ids = torch.randint(0, 64, (4, 3, 2, 2))
    text_a, text_b = torch.randn(4, 5, 16), torch.randn(4, 5, 16)

    def loss_with(text, **kwargs):
        torch.manual_seed(123)
        return phenaki(video_codebook_ids=ids, text_embeds=text, **kwargs)

    phenaki.train()
    # every text dropped: the text cannot matter, the loss is the unconditional one
    torch.testing.assert_close(loss_with(text_a, cond_drop_prob=1.0), loss_with(text_b, cond_drop_prob=1.0))
    assert (loss_with(text_a, cond_drop_prob=0.0) - loss_with(text_b, cond_drop_prob=0.0)).abs() > 1e-6
    # the model's own default reaches MaskGIT while training (the published package passed 0 here), not in eval
    seen = []
    original = phenaki.maskgit.context_and_mask
    phenaki.maskgit.context_and_mask = lambda *args: seen.append(args[3]) or original(*args)
    loss_with(text_a)
    phenaki.eval()
    torch.testing.assert_close(loss_with(text_a), loss_with(text_a, cond_drop_prob=0.0))
    assert seen[0] == 0.25 and set(seen[1:]) == {0.0}


def test_maskgit_loss_falls_on_fixed_tokens(phenaki):
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 3, 2, 2))
    text = torch.randn(2, 4, 16)
    optimizer = torch.optim.Adam(phenaki.maskgit.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = phenaki(video_codebook_ids=ids, text_embeds=text)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_sample_shapes_and_prime_tokens_are_kept(phenaki, moving_squares):
    video = phenaki.sample(num_frames=5, text_embeds=torch.randn(1, 3, 16), cond_scale=3.0)
    assert video.shape == (1, 3, 5, 16, 16) and 0 <= video.min() and video.max() <= 1

    prime = moving_squares(num_videos=2, num_frames=3)
    new, ids = phenaki.sample(
        num_frames=4, prime_frames=prime, text_embeds=torch.randn(2, 3, 16), return_codebook_ids=True
    )
    assert new.shape == (2, 3, 4, 16, 16)
    assert ids.shape == (2, 4, 2, 2)  # 2 primed token frames + 2 new ones
    assert torch.equal(ids[:, :2], phenaki.tokenize(prime))
    # the returned frames are the new ones of the decoded whole
    whole = phenaki.cvivit.decode_from_codebook_indices(ids)
    torch.testing.assert_close(new, whole[:, :, 3:])


def test_sampling_with_a_token_critic_and_a_self_critic(make_cvivit, make_maskgit, moving_squares):
    critic = TokenCritic(num_tokens=64, max_seq_len=64, dim=32, depth=1, dim_context=16, heads=2, dim_head=8)
    for kwargs in (dict(critic=critic), dict(self_critic=True)):
        for schedule in ("decay", "increase", "fixed"):
            model = Phenaki(
                cvivit=make_cvivit(),
                maskgit=make_maskgit(),
                text_encoder_name=None,
                steps=3,
                critic_noise_anneal_schedule=schedule,
                **kwargs,
            )
            prime = moving_squares(num_videos=1, num_frames=3)
            new, ids = model.sample(
                num_frames=2,
                prime_frames=prime,
                text_embeds=torch.randn(1, 2, 16),
                return_codebook_ids=True,
                noise_K=2.0,
            )
            assert new.shape == (1, 3, 2, 16, 16)
            assert torch.equal(ids[:, :2], model.tokenize(prime))
            assert (ids < 64).all()
    # the self-critic is trained with the maskgit loss
    loss, breakdown = model(
        video_codebook_ids=torch.randint(0, 64, (2, 3, 2, 2)),
        text_embeds=torch.randn(2, 4, 16),
        return_loss_breakdown=True,
    )
    assert breakdown.critic > 0
    loss.backward()
    assert model.critic.to_logits.weight.grad is not None


def test_text_encoder_is_owned_not_registered_and_built_offline(make_cvivit, make_maskgit, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("building Phenaki touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = Phenaki(cvivit=make_cvivit(), maskgit=make_maskgit(dim_context=768))  # default T5, width from a table
    assert model.text_encoder is not None and model.text_embed_dim == 768
    assert not any("text_encoder" in key for key in model.state_dict())
    assert model.text_encoder not in list(model.modules())


def test_texts_with_a_trainable_text_encoder(make_cvivit, make_maskgit, simple_text_encoder, moving_squares, tmp_path):
    model = Phenaki(make_cvivit(), make_maskgit(), text_encoder=simple_text_encoder, steps=2)
    loss = model(moving_squares(num_videos=2), ["a red square moving left", "a blue circle moving right"])
    loss.backward()
    assert simple_text_encoder.token_emb.weight.grad is not None
    video = model.sample(text="a red square", num_frames=3, batch_size=2)
    assert video.shape == (2, 3, 3, 16, 16)
    # save / load the whole thing (nested configs: cvivit, maskgit, text encoder)
    model.save_pretrained(tmp_path / "phenaki")
    loaded = Phenaki.from_pretrained(tmp_path / "phenaki").eval()
    model.eval()
    ids = torch.randint(0, 64, (1, 3, 2, 2))
    torch.manual_seed(0)
    expected = model(video_codebook_ids=ids, texts=["a red square"])
    torch.manual_seed(0)
    torch.testing.assert_close(loaded(video_codebook_ids=ids, texts=["a red square"]), expected)


def test_make_video_lengths(make_cvivit, make_maskgit, simple_text_encoder):
    model = Phenaki(make_cvivit(), make_maskgit(), text_encoder=simple_text_encoder, steps=2)
    video, scenes = make_video(
        model, texts=["a red square", "a blue circle", "a cat"], num_frames=[5, 4, 2], prime_lengths=[3, 1]
    )
    assert video.shape == (1, 3, 11, 16, 16)
    assert [s.shape[2] for s in scenes] == [5, 4, 2]
    assert torch.equal(torch.cat(scenes, dim=2), video)


def test_sample_image_size_as_int_equals_pair(make_cvivit, make_maskgit, simple_text_encoder):
    # an int image_size is a square frame size, as in CViViT (it used to fail in tuple(int))
    model = Phenaki(make_cvivit(), make_maskgit(), text_encoder=simple_text_encoder, steps=2)
    square = model.sample(
        text="a red square",
        num_frames=3,
        image_size=16,
        return_codebook_ids=True,
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    pair = model.sample(
        text="a red square",
        num_frames=3,
        image_size=(16, 16),
        return_codebook_ids=True,
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    assert torch.equal(square[1], pair[1])
    assert square[0].shape == (1, 3, 3, 16, 16)


def test_scene_chaining_refuses_codebook_ids(make_cvivit, make_maskgit, simple_text_encoder):
    model = Phenaki(make_cvivit(), make_maskgit(), text_encoder=simple_text_encoder, steps=1)
    with pytest.raises(ValueError, match="return_codebook_ids"):
        make_video(model, texts=["a red square"], num_frames=3, prime_lengths=1, return_codebook_ids=True)


def test_story_sampler_lengths_and_boundaries(make_cvivit, simple_text_encoder):
    # 16 token frames fit in the context: 31 frames at most in one go, a 5 s scene at 8 fps needs chunks
    maskgit = MaskGit(num_tokens=64, max_seq_len=64, dim=32, depth=1, dim_context=16, heads=2, dim_head=8)
    model = Phenaki(make_cvivit(), maskgit, text_encoder=simple_text_encoder, steps=1)
    sampler = StorySampler(model, fps=8)
    plan = sampler.plan(
        [("a red square moving left", 1.0), ("a blue circle moving right", 0.3), ("a green triangle moving up", 5.0)]
    )
    assert [frames for _, frames in plan] == [9, 2, 40]
    video, boundaries = sampler(
        [
            (p, s)
            for p, s in [
                ("a red square moving left", 1.0),
                ("a blue circle moving right", 0.3),
                ("a green triangle moving up", 5.0),
            ]
        ]
    )
    assert video.shape == (1, 3, 51, 16, 16)
    assert boundaries == [(0, 9), (9, 11), (11, 51)]
    with pytest.raises(TypeError, match="scenes"):
        sampler("a red square")


def test_bad_inputs_give_clear_errors(phenaki, make_cvivit, make_maskgit, moving_squares):
    with pytest.raises(ValueError, match="batch sizes must match, got videos=2, text_embeds=3"):
        phenaki(moving_squares(num_videos=2), text_embeds=torch.randn(3, 4, 16))
    with pytest.raises(ValueError, match=r"1 \+ k \* temporal_patch_size"):
        phenaki(torch.rand(1, 3, 4, 16, 16), text_embeds=torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match=r"video_codebook_ids: expected values in \[0, 63\]"):
        phenaki(video_codebook_ids=torch.full((1, 3, 2, 2), 64))
    with pytest.raises(ValueError, match="max_seq_len=64"):
        phenaki(torch.rand(1, 3, 33, 16, 16))
    with pytest.raises(ValueError, match="max_seq_len=64"):
        phenaki.sample(num_frames=33)
    with pytest.raises(ValueError, match="num_frames"):
        phenaki.sample(num_frames=4)
    with pytest.raises(ValueError, match="multiple of temporal_patch_size"):
        phenaki.sample(num_frames=3, prime_frames=torch.rand(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="prime_frames"):
        phenaki.sample(num_frames=2, prime_frames=torch.rand(1, 3, 2, 16, 16))
    with pytest.raises(ValueError, match="no text encoder"):
        phenaki(moving_squares(num_videos=1), ["a text"])
    with pytest.raises(ValueError, match="dim_context=16"):
        Phenaki(make_cvivit(), make_maskgit(), text_encoder_name=None, text_embed_dim=32)
    with pytest.raises(ValueError, match="num_tokens=65"):
        Phenaki(make_cvivit(), make_maskgit(num_tokens=65), text_encoder_name=None)
    with pytest.raises(ValueError, match="exactly one of videos or video_codebook_ids"):
        phenaki()
