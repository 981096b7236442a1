"""Sparse3DNA against a naive dense reference, causality, query chunking, cached decoding and input errors."""

import itertools

import pytest
import torch
from einops import rearrange

from nuwa_pytorch import Sparse3DNA


def dense_reference(attn: Sparse3DNA, x: torch.Tensor) -> torch.Tensor:
    """Dense attention over the whole sequence with the 3DNA window written out position by position."""
    frames, height, width = attn.video_shape
    kt, kh, kw = attn.kernel_size
    dt, dh, dw = attn.dilation
    seq_len = x.shape[1]
    mask = torch.full((attn.heads, seq_len, seq_len), float("-inf"))
    for query in range(seq_len):
        t, rest = divmod(query, height * width)
        y, x_ = divmod(rest, width)
        for i, j, k in itertools.product(range(kt), range(kh), range(kw)):
            key_t, key_y, key_x = t - i * dt, y + (j - kh // 2) * dh, x_ + (k - kw // 2) * dw
            if key_t < 0 or not 0 <= key_y < height or not 0 <= key_x < width:
                continue
            key = (key_t * height + key_y) * width + key_x
            if key <= query:
                mask[:, query, key] = attn.rel_pos_bias[:, (i * kh + j) * kw + k]
    q = rearrange(attn.to_q(x), "b n (h d) -> b h n d", h=attn.heads)
    k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in attn.to_kv(x).chunk(2, dim=-1))
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask
    return attn.to_out(rearrange(logits.softmax(dim=-1) @ v, "b h n d -> b n (h d)"))


CASES = [
    dict(kernel_size=3, dilation=1, query_num_frames_chunk=None),
    dict(kernel_size=(2, 3, 5), dilation=(2, 1, 2), query_num_frames_chunk=1),
    dict(kernel_size=3, dilation=(1, 2, 1), query_num_frames_chunk=2),
]


def make_attn(**kwargs) -> Sparse3DNA:
    attn = Sparse3DNA(16, video_shape=(5, 3, 4), heads=2, dim_head=8, **kwargs)
    torch.nn.init.normal_(attn.rel_pos_bias)  # a non-trivial bias (it starts at zero)
    return attn


@pytest.mark.parametrize("case", CASES)
def test_equals_dense_attention_with_explicit_mask(case):
    attn = make_attn(**case)
    x = torch.randn(2, 5 * 12 - 5, 16)  # a partial last frame too
    torch.testing.assert_close(attn(x), dense_reference(attn, x), atol=1e-5, rtol=1e-5)


def test_causality_by_perturbation():
    attn = make_attn(kernel_size=3, dilation=(1, 1, 2))
    x = torch.randn(1, 60, 16)
    out = attn(x)
    for position in (0, 13, 30, 59):
        perturbed = x.clone()
        perturbed[:, position] += torch.randn(16)
        changed = (attn(perturbed) - out).abs().amax(dim=-1)[0] > 1e-6
        assert not changed[:position].any(), f"a token before {position} saw it"
        assert changed[position]


def test_query_chunking_gives_identical_outputs_and_gradients():
    full = make_attn(kernel_size=3, dilation=(2, 1, 1))
    chunked = make_attn(kernel_size=3, dilation=(2, 1, 1), query_num_frames_chunk=1)
    chunked.load_state_dict(full.state_dict())
    x = torch.randn(2, 60, 16)
    x_full, x_chunked = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_full, out_chunked = full(x_full), chunked(x_chunked)
    torch.testing.assert_close(out_chunked, out_full)
    weights = torch.randn_like(out_full)
    (out_full * weights).sum().backward()
    (out_chunked * weights).sum().backward()
    torch.testing.assert_close(x_chunked.grad, x_full.grad)
    for (name, p_full), p_chunked in zip(full.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(p_chunked.grad, p_full.grad, msg=name)
    assert full.rel_pos_bias.grad.abs().sum() > 0


@pytest.mark.parametrize("case", CASES)
def test_cached_steps_equal_full_forward(case):
    attn = make_attn(**case)
    x = torch.randn(2, 40, 16)
    cache = attn.new_cache(2, x.device, x.dtype)
    steps = torch.cat([attn.forward_step(x[:, p : p + 1], p, cache) for p in range(x.shape[1])], dim=1)
    torch.testing.assert_close(steps, attn(x), atol=1e-5, rtol=1e-5)


def test_any_batch_size_same_result_per_item():
    attn = make_attn(kernel_size=3)
    x = torch.randn(3, 24, 16)
    torch.testing.assert_close(attn(x)[1:2], attn(x[1:2]), atol=1e-6, rtol=1e-5)


def test_bfloat16_autocast_is_finite():
    attn = make_attn(kernel_size=3, dilation=2)
    x = torch.randn(2, 60, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), attn(x), atol=0.1, rtol=0.1)


def test_bad_inputs():
    with pytest.raises(ValueError, match="kernel_size"):
        Sparse3DNA(16, video_shape=(2, 3, 3), kernel_size=(3, 2, 3))
    with pytest.raises(ValueError, match="dilation"):
        Sparse3DNA(16, video_shape=(2, 3, 3), dilation=(1, 2))
    attn = Sparse3DNA(16, video_shape=(2, 3, 3), heads=2, dim_head=8)
    with pytest.raises(ValueError, match="exceed the 2 x 3 x 3"):
        attn(torch.randn(1, 19, 16))
    with pytest.raises(ValueError, match="x: expected shape"):
        attn(torch.randn(1, 9, 12))
