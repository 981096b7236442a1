"""synthesis_core.attention against a naive float64 softmax(QK^T)V computed from the modules' own weights."""

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from synthesis_core.attention import (
    Attention,
    ContinuousPositionBias,
    LinearAttention,
    PerceiverResampler,
    RotaryEmbedding,
    SpaceTimeAttention,
    T5RelativePositionBias,
    Transformer,
    apply_rotary_emb,
    build_attn_mask,
)

ATOL = 1e-5

# the naive reference


def naive_rotary(positions, inv_freq, t):
    """Rotate adjacent channel pairs as complex numbers by position * frequency (float64)."""
    angles = positions.double()[:, None] * inv_freq.double()[None, :]
    rot_dim = 2 * inv_freq.numel()
    pairs = torch.view_as_complex(rearrange(t[..., :rot_dim].double(), "... (d r) -> ... d r", r=2).contiguous())
    rotated = pairs * torch.polar(torch.ones_like(angles), angles)
    rotated = rearrange(torch.view_as_real(rotated), "... d r -> ... (d r)")
    return torch.cat((rotated, t[..., rot_dim:].double()), dim=-1)


def reference_attention(attn, x, context=None, mask=None, attn_bias=None, rotary_positions=None, inv_freq=None):
    """softmax(Q K^T * scale + bias, masked) V in float64 from `attn`'s weights; masks use -inf (null kv keep rows
    defined)."""
    heads = attn.heads
    x = x.double()
    kv_input = context.double() if context is not None else x
    q = x @ attn.to_q.weight.double().T
    k, v = (kv_input @ attn.to_kv.weight.double().T).chunk(2, dim=-1)
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    if rotary_positions is not None:
        q = naive_rotary(rotary_positions, inv_freq, q)
        k = naive_rotary(rotary_positions, inv_freq, k)
    batch, n, m = x.shape[0], q.shape[-2], k.shape[-2]

    logits_bias = torch.zeros(batch, heads, n, m, dtype=torch.float64)
    keep = torch.ones(batch, heads, n, m, dtype=torch.bool)
    if attn_bias is not None:
        logits_bias = logits_bias + attn_bias.double()
    if mask is not None:
        keep = keep & (mask[:, None, None, :] if mask.ndim == 2 else mask[:, None])
    if attn.causal:
        keep = keep & torch.ones(n, m, dtype=torch.bool).tril(m - n)

    if attn.num_null_kv > 0:
        null_k, null_v = (t.double()[None].expand(batch, -1, -1, -1) for t in attn.null_kv)
        k, v = torch.cat((null_k, k), dim=-2), torch.cat((null_v, v), dim=-2)
        logits_bias = F.pad(logits_bias, (attn.num_null_kv, 0))
        keep = F.pad(keep, (attn.num_null_kv, 0), value=True)

    if attn.qk_norm:
        q = q / q.norm(dim=-1, keepdim=True) * attn.qk_scale.double()
        k = k / k.norm(dim=-1, keepdim=True)
        scale = 1.0
    else:
        scale = q.shape[-1] ** -0.5
    logits = (q @ k.transpose(-1, -2)) * scale + logits_bias
    logits = logits.masked_fill(~keep, float("-inf"))
    out = logits.softmax(dim=-1) @ v
    out = rearrange(out, "b h n d -> b n (h d)")
    return out @ attn.to_out.weight.double().T


def close(actual, expected, atol=ATOL):
    return torch.allclose(actual.double(), expected.double(), atol=atol, rtol=0)


# Attention


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("num_null_kv", [0, 2])
def test_self_attention_matches_reference_with_mask_and_bias(causal, qk_norm, num_null_kv):
    attn = Attention(16, dim_head=8, heads=2, causal=causal, qk_norm=qk_norm, num_null_kv=num_null_kv)
    x = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:3] = False
    bias = torch.randn(2, 7, 7)
    assert close(attn(x), reference_attention(attn, x))
    assert close(attn(x, mask=mask, attn_bias=bias), reference_attention(attn, x, mask=mask, attn_bias=bias))
    batch_bias = torch.randn(3, 2, 7, 7)
    assert close(attn(x, attn_bias=batch_bias), reference_attention(attn, x, attn_bias=batch_bias))


def test_cross_attention_matches_reference_with_context_mask_and_3d_mask():
    attn = Attention(16, dim_head=8, heads=2, dim_context=12, num_null_kv=1)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 4, 12)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert close(attn(x, context=context, mask=mask), reference_attention(attn, x, context=context, mask=mask))
    mask_3d = torch.rand(2, 5, 4) > 0.3
    assert close(attn(x, context=context, mask=mask_3d), reference_attention(attn, x, context=context, mask=mask_3d))


def test_rotary_attention_matches_reference():
    attn = Attention(16, dim_head=8, heads=2, causal=True)
    rotary = RotaryEmbedding(8)
    x = torch.randn(2, 6, 16)
    expected = reference_attention(attn, x, rotary_positions=torch.arange(6), inv_freq=rotary.inv_freq)
    assert close(attn(x, rotary_emb=rotary(6)), expected)


def test_math_kernel_switch_and_dropout():
    attn = Attention(16, dim_head=8, heads=2, num_null_kv=1, dropout=0.5, flash=False)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, False, True, False, True]])
    attn.eval()
    assert close(attn(x, mask=mask), reference_attention(attn, x, mask=mask))  # eval: no dropout
    attn.train()
    dropped = attn(x, mask=mask)
    assert not torch.allclose(dropped, attn(x, mask=mask))  # train: random attention dropout


def test_causal_attention_ignores_the_future():
    attn = Attention(16, dim_head=8, heads=2, causal=True, num_null_kv=1)
    x = torch.randn(2, 8, 16)
    out = attn(x)
    perturbed = x.clone()
    perturbed[:, 5] += 3.0
    out_perturbed = attn(perturbed)
    assert torch.equal(out[:, :5], out_perturbed[:, :5])
    assert not torch.allclose(out[:, 5:], out_perturbed[:, 5:])


def test_fully_masked_context_row_is_finite_and_attends_to_null_kv():
    attn = Attention(16, dim_head=8, heads=2, dim_context=12, num_null_kv=2)
    x, context = torch.randn(2, 3, 16), torch.randn(2, 4, 12)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0] = True  # item 1 has no text at all
    out = attn(x, context=context, mask=mask)
    assert torch.isfinite(out).all()
    assert close(out, reference_attention(attn, x, context=context, mask=mask))
    # without null key/values the safe fill still gives finite output (a uniform average instead of NaN)
    no_null = Attention(16, dim_head=8, heads=2, dim_context=12)
    assert torch.isfinite(no_null(x, context=context, mask=mask)).all()


def test_attention_input_errors_name_the_argument():
    attn = Attention(16, dim_head=8, heads=2)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, \*, 16\)"):
        attn(torch.randn(2, 3, 15))
    with pytest.raises(ValueError, match="mask"):
        attn(torch.randn(2, 3, 16), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_bias"):
        attn(torch.randn(2, 3, 16), attn_bias=torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="context"):
        Attention(16, dim_head=8, heads=2, dim_context=12)(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match=r"context: expected shape \(2, \*, 12\)"):
        Attention(16, dim_head=8, heads=2, dim_context=12)(torch.randn(2, 3, 16), context=torch.randn(2, 4, 16))


def test_mask_is_built_in_query_dtype_and_broadcast():
    mask = build_attn_mask(
        4, 6, dtype=torch.bfloat16, key_mask=torch.ones(3, 5, dtype=torch.bool), causal=True, num_null_kv=1
    )
    assert mask.dtype == torch.bfloat16 and mask.shape == (3, 1, 4, 6)
    assert build_attn_mask(4, 4, dtype=torch.float32) is None
    bias_mask = build_attn_mask(4, 4, dtype=torch.bfloat16, attn_bias=torch.randn(2, 4, 4))
    assert bias_mask.dtype == torch.bfloat16 and bias_mask.shape == (1, 2, 4, 4)


# position encodings


def test_rotary_preserves_norms_and_depends_on_relative_position_only():
    rotary = RotaryEmbedding(8)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    positions = torch.arange(40)
    freqs = rotary(positions)
    q_rot = apply_rotary_emb(freqs.double(), q.expand(40, 8))
    k_rot = apply_rotary_emb(freqs.double(), k.expand(40, 8))
    assert torch.allclose(q_rot.norm(dim=-1), q.norm().expand(40), atol=1e-6)
    dots = q_rot @ k_rot.T  # dots[i, j] = q_i . k_j
    for offset in (-3, 0, 5):
        diagonal = torch.diagonal(dots, offset=offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4)
    # partial rotary leaves the remaining channels untouched
    t = torch.randn(2, 5, 12)
    assert torch.equal(apply_rotary_emb(rotary(5), t)[..., 8:], t[..., 8:])


@pytest.mark.parametrize(
    ("causal", "relative_position", "expected_bucket"),
    [
        (False, 0, 0),
        (False, -3, 3),  # key 3 steps behind the query
        (False, 3, 19),  # key ahead: the second half of the buckets (16 + 3)
        (False, -20, 10),  # 8 + floor(log(20 / 8) / log(128 / 8) * 8)
        (False, -1000, 15),  # beyond max_distance: last bucket of the half
        (True, 5, 0),  # causal: the future collapses to 0
        (True, -20, 17),  # 16 + floor(log(20 / 16) / log(128 / 16) * 16)
        (True, -10, 10),
    ],
)
def test_t5_buckets_hand_cases(causal, relative_position, expected_bucket):
    bucket = T5RelativePositionBias.relative_position_bucket(
        torch.tensor([relative_position]), causal=causal, num_buckets=32, max_distance=128
    )
    assert bucket.item() == expected_bucket


def test_t5_bias_lookup_and_rectangular_alignment():
    t5 = T5RelativePositionBias(heads=3, causal=False)
    bias = t5(5)
    assert bias.shape == (3, 5, 5)
    table = t5.relative_attention_bias.weight
    assert torch.equal(bias[:, 4, 1], table[3])  # key 3 behind -> bucket 3
    assert torch.equal(bias[:, 1, 4], table[19])  # key 3 ahead -> bucket 19
    rect = t5(2, 5)  # the 2 queries are the last 2 of the 5 positions
    assert torch.equal(rect, bias[:, 3:])


@pytest.mark.parametrize("log_distance", [True, False])
def test_continuous_bias_matches_mlp_on_offsets_for_unseen_sizes(log_distance):
    for sizes_seen in ((5,), (2, 3), (3, 5), (2, 2, 3), (3, 1, 2)):
        cpb = ContinuousPositionBias(dim=16, heads=2, num_dims=len(sizes_seen), log_distance=log_distance)
        bias = cpb(*sizes_seen)
        n = math.prod(sizes_seen)
        assert bias.shape == (2, n, n)
        positions = torch.stack(torch.meshgrid(*[torch.arange(s) for s in sizes_seen], indexing="ij"), dim=-1)
        positions = positions.reshape(n, len(sizes_seen)).float()
        offsets = positions[:, None] - positions[None, :]  # query position - key position
        features = torch.sign(offsets) * torch.log(offsets.abs() + 1) if log_distance else offsets
        assert torch.allclose(bias, rearrange(cpb.net(features), "i j h -> h i j"), atol=1e-6)
    with pytest.raises(ValueError, match="num_dims"):
        cpb(4)


# SpaceTimeAttention


def spacetime_reference(module, video):
    """The module's residual branch recomputed with the naive attention on the rearranged tokens."""
    batch, _, frames, height, width = video.shape
    if module.axis == "time":
        tokens = rearrange(video, "b c t h w -> (b h w) t c")
        sizes = (frames,)
    else:
        tokens = rearrange(video, "b c t h w -> (b t) (h w) c")
        sizes = (height, width)
    bias = module.pos_bias(*sizes) if module.pos_bias is not None else None
    out = reference_attention(module.attn, module.norm(tokens), attn_bias=bias)
    if module.axis == "time":
        return rearrange(out, "(b h w) t c -> b c t h w", b=batch, h=height)
    return rearrange(out, "(b t) (h w) c -> b c t h w", b=batch, h=height)


@pytest.mark.parametrize(
    ("axis", "pos_bias", "causal"),
    [("space", None, False), ("space", "continuous", False), ("time", "t5", True), ("time", "continuous", False)],
)
def test_spacetime_attention_matches_reference(axis, pos_bias, causal):
    module = SpaceTimeAttention(16, axis=axis, dim_head=8, heads=2, pos_bias=pos_bias, causal=causal, num_null_kv=1)
    video = torch.randn(2, 16, 3, 2, 3)
    assert close(module(video), spacetime_reference(module, video))


@pytest.mark.parametrize("pos_bias", [None, "rotary", "continuous"])
def test_space_attention_does_not_mix_frames(pos_bias):
    module = SpaceTimeAttention(16, axis="space", dim_head=8, heads=2, pos_bias=pos_bias)
    video = torch.randn(2, 16, 4, 3, 3)
    out = module(video)
    perturbed = video.clone()
    perturbed[:, :, 2] += 1.0
    changed = (module(perturbed) - out).abs().amax(dim=(0, 1, 3, 4))
    assert changed[2] > 0 and changed[[0, 1, 3]].max() == 0


@pytest.mark.parametrize("pos_bias", [None, "rotary", "t5"])
def test_time_attention_does_not_mix_pixels(pos_bias):
    module = SpaceTimeAttention(16, axis="time", dim_head=8, heads=2, pos_bias=pos_bias)
    video = torch.randn(2, 16, 4, 3, 3)
    out = module(video)
    perturbed = video.clone()
    perturbed[:, :, :, 1, 2] += 1.0
    changed = (module(perturbed) - out).abs().amax(dim=(0, 1, 2))
    assert changed[1, 2] > 0
    changed[1, 2] = 0
    assert changed.max() == 0


def test_time_attention_skip_mask_and_enabled_switch_make_it_the_identity():
    module = SpaceTimeAttention(16, axis="time", dim_head=8, heads=2, pos_bias="t5")
    video = torch.randn(3, 16, 4, 2, 2)
    full = module(video)
    skip_mask = torch.tensor([True, False, True])
    out = module(video, skip_mask=skip_mask)
    assert out[0].eq(0).all() and out[2].eq(0).all()  # x + branch == x: no mixing over time for those items
    assert torch.allclose(out[1], full[1]) and full[0].abs().max() > 0
    assert module(video, enabled=False).eq(0).all()
    residual = SpaceTimeAttention(16, axis="time", dim_head=8, heads=2, residual=True)
    assert torch.equal(residual(video, enabled=False), video)
    assert torch.equal(residual(video, skip_mask=torch.ones(3, dtype=torch.bool)), video)
    # the space module ignores the switches
    space = SpaceTimeAttention(16, axis="space", dim_head=8, heads=2)
    assert torch.allclose(space(video, enabled=False), space(video))


def test_spacetime_cross_attention_and_argument_errors():
    module = SpaceTimeAttention(16, axis="space", dim_head=8, heads=2, dim_context=12, zero_init_output=True)
    video, context = torch.randn(2, 16, 2, 3, 3), torch.randn(2, 5, 12)
    assert module(video, context=context).eq(0).all()  # zero-initialised outputs: the block starts as identity
    with torch.no_grad():
        module.cross_attn.to_out.weight.normal_()
    context_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = module(video, context=context, context_mask=context_mask)
    hidden = rearrange(video, "b c t h w -> b (t h w) c")
    expected = reference_attention(module.cross_attn, module.cross_norm(hidden), context=context, mask=context_mask)
    assert close(out, rearrange(expected, "b (t h w) c -> b c t h w", t=2, h=3))
    with pytest.raises(ValueError, match="axis"):
        SpaceTimeAttention(16, axis="depth")
    with pytest.raises(ValueError, match="pos_bias"):
        SpaceTimeAttention(16, axis="space", pos_bias="t5")
    with pytest.raises(ValueError, match="x: expected shape"):
        module(torch.randn(2, 8, 2, 3, 3))
    with pytest.raises(ValueError, match="skip_mask"):
        SpaceTimeAttention(16, axis="time", dim_head=8, heads=2)(video, skip_mask=torch.ones(3, dtype=torch.bool))


# LinearAttention, PerceiverResampler, Transformer


def test_linear_attention_equals_its_quadratic_form():
    module = LinearAttention(8, dim_head=4, heads=2)
    x = torch.randn(2, 8, 3, 5)
    normed = module.norm(x).double()
    qkv = F.conv2d(normed, module.to_qkv.weight.double())
    q, k, v = (rearrange(t, "b (h d) x y -> b h (x y) d", h=2) for t in qkv.chunk(3, dim=1))
    q = q.softmax(dim=-1) * module.scale
    k = k.softmax(dim=-2)
    out = (q @ k.transpose(-1, -2)) @ v  # the n x n form
    out = rearrange(out, "b h (x y) d -> b (h d) x y", x=3)
    expected = module.to_out[1](F.conv2d(out, module.to_out[0].weight.double()).float())
    assert close(module(x), expected)
    video = torch.randn(1, 8, 2, 3, 3)
    assert torch.allclose(module(video)[:, :, 1], module(video[:, :, 1]), atol=1e-6)


def test_perceiver_resampler_shape_mask_and_reference():
    resampler = PerceiverResampler(16, depth=1, dim_head=8, heads=2, num_latents=3, num_latents_mean_pooled=2)
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    out = resampler(x, mask=mask)
    assert out.shape == (2, 5, 16)
    # masked positions do not matter
    changed = x.clone()
    changed[1, 3:] = torch.randn(3, 16)
    assert torch.allclose(resampler(changed, mask=mask), out, atol=1e-6)
    # one layer recomputed by hand
    layer = resampler.layers[0]
    media = x + resampler.pos_emb.weight[:6]
    pooled = (media * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    latents = torch.cat((resampler.to_latents_from_mean_pooled(pooled), resampler.latents.expand(2, -1, -1)), dim=1)
    normed = layer["norm_latents"](latents)
    context = torch.cat((layer["norm_media"](media), normed), dim=1)
    kv_mask = F.pad(mask, (0, 5), value=True)
    latents = latents + reference_attention(layer["attn"], normed, context=context, mask=kv_mask).float()
    latents = latents + layer["ff"](latents)
    assert close(out, resampler.norm(latents), atol=1e-4)
    with pytest.raises(ValueError, match="max_seq_len"):
        PerceiverResampler(16, max_seq_len=4)(torch.randn(1, 5, 16))


@pytest.mark.parametrize("pos_bias", [None, "t5", "continuous"])
def test_transformer_is_causal_and_matches_manual_stack(pos_bias):
    model = Transformer(16, depth=2, dim_head=8, heads=2, causal=True, pos_bias=pos_bias, rotary=pos_bias is None)
    x = torch.randn(2, 6, 16)
    out = model(x)
    perturbed = x.clone()
    perturbed[:, 4] += 1.0
    assert torch.allclose(model(perturbed)[:, :4], out[:, :4], atol=1e-6)

    hidden = x
    bias = model.pos_bias(6) if model.pos_bias is not None else None
    for block in model.layers:
        attn_out = reference_attention(
            block.attn,
            block.attn_norm(hidden),
            attn_bias=bias,
            rotary_positions=torch.arange(6) if pos_bias is None else None,
            inv_freq=model.rotary_emb.inv_freq if pos_bias is None else None,
        )
        hidden = hidden + attn_out.float()
        hidden = hidden + block.ff(block.ff_norm(hidden))
    assert close(out, model.norm(hidden), atol=1e-4)


def test_transformer_cross_attention_context_mask_and_checkpointing():
    model = Transformer(16, depth=2, dim_head=8, heads=2, dim_context=12, num_null_kv=1, checkpoint=True).train()
    x, context = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 3, 12)
    context_mask = torch.tensor([[True, True, True], [False, False, False]])
    out = model(x, context=context, context_mask=context_mask)
    (grad_checkpointed,) = torch.autograd.grad(out.sum(), x)
    model.checkpoint = False
    out_plain = model(x, context=context, context_mask=context_mask)
    (grad_plain,) = torch.autograd.grad(out_plain.sum(), x)
    assert torch.allclose(out, out_plain) and torch.allclose(grad_checkpointed, grad_plain, atol=1e-6)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="context"):
        model(x)


# precision and compilation


def test_bf16_autocast_runs_attention_and_transformer():
    attn = Attention(16, dim_head=8, heads=2, causal=True, num_null_kv=1, qk_norm=True)
    model = Transformer(16, depth=2, dim_head=8, heads=2, dim_context=12, pos_bias="t5", num_null_kv=1)
    x, context = torch.randn(2, 6, 16), torch.randn(2, 3, 12)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    bias = torch.randn(2, 6, 6)  # a float32 bias must be cast to the bf16 queries
    reference = attn(x, mask=mask, attn_bias=bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, mask=mask, attn_bias=bias)
        model_out = model(x, mask=mask, context=context)
        video_out = SpaceTimeAttention(16, axis="time", dim_head=8, heads=2, pos_bias="t5", causal=True)(
            torch.randn(1, 16, 3, 2, 2)
        )
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.allclose(out.float(), reference, atol=0.1)
    assert torch.isfinite(model_out).all() and torch.isfinite(video_out).all()


@pytest.mark.slow
def test_torch_compile_attention_on_cpu():
    if shutil.which("g++") is None and shutil.which("c++") is None and shutil.which("clang++") is None:
        pytest.skip("no C++ compiler for the inductor CPU backend")
    attn = Attention(16, dim_head=8, heads=2, causal=True, num_null_kv=1, qk_norm=True)
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False
    compiled = torch.compile(attn, fullgraph=True)  # fullgraph: no graph breaks in the hot path
    try:
        out = compiled(x, mask=mask)
    except Exception as error:  # inductor toolchain problems are environment issues, not ours
        if "CppCompileError" in type(error).__name__ or "CppCompileError" in str(error):
            pytest.skip(f"inductor C++ toolchain unavailable: {error}")
        raise
    assert torch.allclose(out, attn(x, mask=mask), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_attention_matches_float32():
    attn = Attention(32, dim_head=16, heads=2, causal=True, num_null_kv=1).cuda()
    x = torch.randn(2, 64, 32, device="cuda")
    mask = torch.ones(2, 64, dtype=torch.bool, device="cuda")
    mask[1, 40:] = False
    reference = attn(x, mask=mask)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = attn(x, mask=mask)
    assert torch.allclose(out.float(), reference, atol=0.05)
