"""MaskGit, TokenCritic, SelfCritic, CriticTrainer: masking schedule, guidance, the null path, critics, errors."""

import math

import pytest
import torch

from phenaki_pytorch import CriticTrainer, MaskGit, SelfCritic, TokenCritic
from phenaki_pytorch.maskgit import cosine_schedule, gumbel_sample, mask_by_ratio, num_masked_at_step


def test_cosine_schedule():
    assert cosine_schedule(0.0) == 1.0
    assert abs(cosine_schedule(1.0)) < 1e-12
    assert math.isclose(cosine_schedule(0.5), math.cos(math.pi / 4))
    t = torch.linspace(0, 1, 11)
    values = cosine_schedule(t)
    assert torch.all(values[1:] <= values[:-1])
    # the sampling schedule: non-increasing masked counts that reach 0 exactly at the last step
    for steps, tokens in ((18, 64), (4, 48), (1, 10), (30, 5)):
        counts = [num_masked_at_step(s, steps, tokens) for s in range(steps)]
        assert counts[-1] == 0 and all(a >= b for a, b in zip(counts, counts[1:])) and counts[0] < tokens
        assert counts[0] == math.floor(math.cos(math.pi / 2 / steps) * tokens)


def test_mask_by_ratio_masks_exact_counts():
    mask = mask_by_ratio((4, 20), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert mask.sum(dim=-1).tolist() == [1, 5, 10, 20]  # at least one token is always masked
    can_mask = torch.arange(20) >= 8
    mask = mask_by_ratio((3, 20), torch.tensor([0.5, 1.0, 0.1]), can_mask=can_mask.expand(3, 20))
    assert not mask[:, :8].any()
    assert mask.sum(dim=-1).tolist() == [6, 12, 1]
    # uniform: every position gets masked sometimes
    hits = sum(mask_by_ratio((1, 10), torch.tensor([0.3])).long() for _ in range(200))
    assert (hits > 20).all()


def test_gumbel_sample_follows_the_distribution():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(20000, 3)
    counts = torch.bincount(gumbel_sample(logits), minlength=3).float() / 20000
    torch.testing.assert_close(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.02, rtol=0)
    assert torch.equal(gumbel_sample(logits, temperature=0.0), torch.zeros(20000, dtype=torch.long))


def test_maskgit_is_bidirectional_and_uses_the_grid(make_maskgit):
    maskgit = make_maskgit().eval()
    ids = torch.randint(0, 64, (1, 48))
    ids[:, :10] = maskgit.mask_id
    logits = maskgit(ids, video_patch_shape=(3, 4, 4))
    assert logits.shape == (1, 48, 64)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 64
    assert (maskgit(changed, video_patch_shape=(3, 4, 4))[:, 0] - logits[:, 0]).abs().max() > 1e-5
    # the 3D position bias depends on the grid
    assert (maskgit(ids, video_patch_shape=(1, 6, 8)) - logits).abs().max() > 1e-5


def test_guidance_combines_conditional_and_null_branches(make_maskgit):
    maskgit = make_maskgit().eval()
    ids = torch.randint(0, 65, (2, 32))
    text = torch.randn(2, 5, 16)
    text_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    cond = maskgit(ids, text, text_mask)
    null = maskgit(ids)  # no text: the null key/values only
    assert (cond - null).abs().max() > 1e-4
    torch.testing.assert_close(maskgit(ids, text, text_mask, cond_drop_prob=1.0), null)
    guided = maskgit.forward_with_cond_scale(ids, cond_scale=3.0, text_embeds=text, text_mask=text_mask)
    torch.testing.assert_close(guided, null + 3.0 * (cond - null), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        maskgit.forward_with_cond_scale(ids, cond_scale=1.0, text_embeds=text, text_mask=text_mask), cond
    )
    # padding really is masked: changing a padded text token changes nothing
    text2 = text.clone()
    text2[1, 3] += 10
    torch.testing.assert_close(maskgit(ids, text2, text_mask)[1], cond[1])


def _cross_attention_grads(maskgit):
    cross = maskgit.transformer.layers[0].cross_attn
    return cross.null_kv.grad, cross.to_kv.weight.grad


def test_guidance_null_path_receives_gradients(make_maskgit):
    """Dropping the text trains the null key/values (the unconditional branch) and nothing of the text path."""
    maskgit = make_maskgit()
    ids = torch.randint(0, 65, (4, 32))
    text = torch.randn(4, 5, 16)

    maskgit(ids, text, cond_drop_prob=1.0).logsumexp(-1).mean().backward()
    null_grad, text_grad = _cross_attention_grads(maskgit)
    assert null_grad is not None and null_grad.abs().sum() > 0
    assert text_grad is None or text_grad.abs().max() == 0

    maskgit.zero_grad()
    maskgit(ids, text, cond_drop_prob=0.0).logsumexp(-1).mean().backward()
    _, text_grad = _cross_attention_grads(maskgit)
    assert text_grad.abs().sum() > 0

    # dropout is per sample: with p = 0.5 some rows are conditional and some are not
    maskgit.eval()
    cond, null = maskgit(ids, text), maskgit(ids)
    dropped = maskgit(ids, text, cond_drop_prob=0.5)
    is_null = [torch.allclose(dropped[i], null[i], atol=1e-5) for i in range(4)]
    is_cond = [torch.allclose(dropped[i], cond[i], atol=1e-5) for i in range(4)]
    assert all(a != b for a, b in zip(is_null, is_cond))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_critic_with_context_and_dropout_trains(make_maskgit, dropout):
    maskgit = make_maskgit()
    critic = TokenCritic(
        num_tokens=64,
        max_seq_len=64,
        dim=32,
        depth=1,
        dim_context=16,
        heads=2,
        dim_head=8,
        attn_dropout=dropout,
        ff_dropout=dropout,
    ).train()
    trainer = CriticTrainer(maskgit, critic)
    codes = torch.randint(0, 64, (2, 48))
    text = torch.randn(2, 6, 16)
    loss = trainer(codes, text, torch.ones(2, 6, dtype=torch.bool), video_patch_shape=(3, 4, 4))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in critic.parameters() if p.requires_grad)
    # MaskGit only generates samples here: it is not trained and not part of the trainer's parameters
    assert all(p.grad is None for p in maskgit.parameters())
    assert set(trainer.parameters()) == set(critic.parameters())
    scores = critic.forward_with_cond_scale(codes, cond_scale=2.0, text_embeds=text)
    assert scores.shape == (2, 48)


def test_critic_learns_to_spot_generated_tokens(make_maskgit):
    """A frozen MaskGit that always predicts token 0 is easy to spot: the critic loss falls well below log 2."""
    maskgit = make_maskgit(dim_context=None, unconditional=True)
    with torch.no_grad():
        maskgit.to_logits.weight.zero_()
        maskgit.to_logits.bias.copy_(torch.full((64,), -10.0)).index_fill_(0, torch.tensor([0]), 10.0)
    critic = TokenCritic(num_tokens=64, max_seq_len=64, dim=32, depth=1, heads=2, dim_head=8, unconditional=True)
    trainer = CriticTrainer(maskgit, critic, temperature=0.0)
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)
    codes = torch.randint(1, 64, (8, 16))
    losses = []
    for _ in range(40):
        loss = trainer(codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * math.log(2)


def test_self_critic_shares_the_trunk(make_maskgit):
    maskgit = make_maskgit()
    critic = SelfCritic(maskgit)
    new_params = [p for name, p in critic.named_parameters() if not name.startswith("maskgit.")]
    assert len(new_params) == 2  # the head only
    scores = critic(torch.randint(0, 64, (2, 16)), torch.randn(2, 3, 16))
    assert scores.shape == (2, 16)
    loss = CriticTrainer(maskgit, critic)(torch.randint(0, 64, (2, 16)))
    loss.backward()
    assert maskgit.transformer.layers[0].ff.net[1][0].weight.grad is not None


def test_self_conditioning(make_maskgit):
    maskgit = make_maskgit(self_cond=True).eval()
    ids = torch.randint(0, 65, (1, 16))
    logits, embeds = maskgit(ids, return_embeds=True)
    again = maskgit(ids, self_cond_embeds=embeds)
    assert (again - logits).abs().max() > 1e-5


def test_save_and_load_pretrained(make_maskgit, tmp_path):
    maskgit = make_maskgit().eval()
    maskgit.save_pretrained(tmp_path / "maskgit")
    loaded = MaskGit.from_pretrained(tmp_path / "maskgit").eval()
    ids = torch.randint(0, 65, (1, 16))
    assert torch.equal(maskgit(ids), loaded(ids))


def test_bf16_autocast(make_maskgit):
    maskgit = make_maskgit()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = maskgit(
            torch.randint(0, 65, (2, 48)), torch.randn(2, 4, 16), video_patch_shape=(3, 4, 4), cond_drop_prob=0.5
        )
    assert torch.isfinite(logits.float()).all()
    logits.float().mean().backward()


def test_bad_inputs_give_clear_errors(make_maskgit):
    maskgit = make_maskgit()
    with pytest.raises(ValueError, match=r"token ids in \[0, 63\].*got values in \[0, 70\]"):
        maskgit(torch.tensor([[0, 70]]))
    with pytest.raises(ValueError, match="token ids"):
        maskgit(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="exceed max_seq_len=64"):
        maskgit(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="batch sizes must match"):
        maskgit(torch.zeros(2, 8, dtype=torch.long), torch.randn(3, 4, 16))
    with pytest.raises(ValueError, match="text_embeds"):
        maskgit(torch.zeros(2, 8, dtype=torch.long), torch.randn(2, 4, 17))
    with pytest.raises(ValueError, match="video_patch_shape"):
        maskgit(torch.zeros(2, 8, dtype=torch.long), video_patch_shape=(2, 2, 3))
    with pytest.raises(TypeError, match="integer"):
        maskgit(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="cond_drop_prob"):
        maskgit(torch.zeros(2, 8, dtype=torch.long), cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="mask id is not a code"):
        CriticTrainer(maskgit, TokenCritic(num_tokens=64, max_seq_len=64, dim=16, depth=1))(torch.full((1, 8), 64))
    with pytest.raises(ValueError, match="num_tokens"):
        CriticTrainer(maskgit, TokenCritic(num_tokens=10, max_seq_len=64, dim=16, depth=1))
