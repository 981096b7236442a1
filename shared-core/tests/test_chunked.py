"""synthesis_core.chunked: every memory saver gives the plain results (forward and gradients) for less memory."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from synthesis_core.attention import Attention
from synthesis_core.chunked import (
    ReversibleSequence,
    SequentialResidual,
    apply_in_slices,
    checkpointed,
    chunked_attention,
    chunked_feedforward,
)
from synthesis_core.layers import FeedForward, LayerNorm


class LargestIntermediate(TorchDispatchMode):
    """Records the element count of the largest tensor produced by any op while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


def grads_of(fn, *inputs):
    out = fn(*inputs)
    return out, torch.autograd.grad(out.square().sum(), inputs)


# chunked feed-forward and slices


def test_chunked_feedforward_and_slices_equal_unchunked():
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    x = torch.randn(2, 11, 8, requires_grad=True)
    plain, plain_grad = grads_of(net, x)
    chunked, chunked_grad = grads_of(lambda t: chunked_feedforward(net, t, chunk_size=4), x)
    assert torch.allclose(plain, chunked, atol=1e-6) and torch.allclose(plain_grad[0], chunked_grad[0], atol=1e-6)
    assert torch.equal(chunked_feedforward(net, x, None), net(x))

    decoder = nn.Conv2d(4, 3, 3, padding=1)  # e.g. decoding 7 frames two at a time
    frames = torch.randn(7, 4, 8, 8)
    assert torch.allclose(apply_in_slices(decoder, frames, slice_size=2), decoder(frames), atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_feedforward(net, x, chunk_size=0)


# chunked attention


@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "broadcast"])
def test_chunked_attention_equals_sdpa_with_gradients(mask_kind):
    q = torch.randn(2, 2, 10, 8, requires_grad=True)
    k = torch.randn(2, 2, 7, 8, requires_grad=True)
    v = torch.randn(2, 2, 7, 8, requires_grad=True)
    mask = {
        None: None,
        "bool": torch.rand(2, 1, 10, 7) > 0.3,
        "float": torch.randn(2, 2, 10, 7),
        "broadcast": torch.tensor([[True] * 5 + [False] * 2, [True] * 7])[:, None, None, :],
    }[mask_kind]
    if mask_kind == "bool":
        mask[..., 0] = True  # no fully masked rows: SDPA itself gives NaN there
    plain, plain_grads = grads_of(lambda *t: F.scaled_dot_product_attention(*t, attn_mask=mask), q, k, v)
    for checkpoint_chunks in (False, True):
        chunked, chunked_grads = grads_of(
            lambda *t, checkpoint_chunks=checkpoint_chunks: chunked_attention(
                *t, query_chunk_size=3, attn_mask=mask, checkpoint_chunks=checkpoint_chunks
            ),
            q,
            k,
            v,
        )
        assert torch.allclose(plain, chunked, atol=1e-5)
        for expected, actual in zip(plain_grads, chunked_grads):
            assert torch.allclose(expected, actual, atol=1e-5)


@pytest.mark.parametrize("k_len", [9, 12])
def test_chunked_causal_attention_equals_sdpa_and_combines_with_a_mask(k_len):
    q, k, v = torch.randn(1, 2, 9, 4), torch.randn(1, 2, k_len, 4), torch.randn(1, 2, k_len, 4)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # top-left aligned, as SDPA
    assert torch.allclose(chunked_attention(q, k, v, 4, causal=True), expected, atol=1e-5)

    key_mask = torch.ones(1, 1, 1, k_len, dtype=torch.bool)
    key_mask[..., 1] = False
    combined = key_mask & torch.ones(9, k_len, dtype=torch.bool).tril()
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=combined)
    assert torch.allclose(chunked_attention(q, k, v, 4, attn_mask=key_mask, causal=True), expected, atol=1e-5)
    float_mask = torch.randn(1, 2, 9, k_len)
    expected = F.scaled_dot_product_attention(
        q, k, v, attn_mask=float_mask.masked_fill(~torch.ones(9, k_len, dtype=torch.bool).tril(), float("-inf"))
    )
    assert torch.allclose(chunked_attention(q, k, v, 4, attn_mask=float_mask, causal=True), expected, atol=1e-5)


def test_chunked_attention_largest_intermediate_grows_with_chunk_not_sequence():
    heads, k_len, chunk = 2, 256, 16  # small head dim: the logits, not q/k/v/out, are the big tensors

    def largest(q_len, query_chunk_size):
        q = torch.randn(1, heads, q_len, 4)
        k = v = torch.randn(1, heads, k_len, 4)
        counter = LargestIntermediate()
        # the math kernel materialises the logits, which is what chunking caps
        with sdpa_kernel(SDPBackend.MATH), counter:
            chunked_attention(q, k, v, query_chunk_size, causal=True)
        return counter.largest

    assert largest(128, None) >= heads * 128 * k_len
    assert largest(256, None) >= heads * 256 * k_len
    chunked_small, chunked_large = largest(128, chunk), largest(512, chunk)
    assert chunked_small == chunked_large == heads * chunk * k_len  # one chunk's logits, whatever the query length


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_attention_peak_cuda_memory():
    q = torch.randn(1, 4, 4096, 32, device="cuda")
    k = v = torch.randn(1, 4, 4096, 32, device="cuda")

    def peak(query_chunk_size):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        with sdpa_kernel(SDPBackend.MATH):
            out = chunked_attention(q, k, v, query_chunk_size, causal=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline, out

    full_peak, full = peak(None)
    chunk_peak, chunked = peak(256)
    assert torch.allclose(full, chunked, atol=1e-4)
    assert chunk_peak < full_peak / 4


# reversible layers


class AttentionBranch(nn.Module):
    def __init__(self, dim, dim_context=None, dropout=0.0):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.attn = Attention(dim, dim_head=4, heads=2, dim_context=dim_context, dropout=dropout)

    def forward(self, x, mask=None, context=None):
        return self.attn(self.norm(x), mask=mask, context=context)


def make_blocks(depth, dim=8, dropout=0.0, dim_context=None):
    return [
        (AttentionBranch(dim, dim_context=dim_context, dropout=dropout), FeedForward(dim, mult=2, dropout=dropout, pre_norm=True))
        for _ in range(depth)
    ]


def all_grads(module, loss, extra):
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, [*extra, *params])
    return grads


def test_reversible_gradients_equal_plain_stack_in_float64():
    torch.manual_seed(0)
    reversible = ReversibleSequence(make_blocks(3)).double()
    plain = SequentialResidual(make_blocks(3)).double()
    plain.load_state_dict(reversible.state_dict())  # same parameter layout
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])

    out_rev = reversible(x, mask=mask)
    out_plain = plain(x, mask=mask)
    assert torch.allclose(out_rev, out_plain, atol=1e-10)
    grads_rev = all_grads(reversible, out_rev.sin().sum(), [x])
    grads_plain = all_grads(plain, out_plain.sin().sum(), [x])
    for rev, ref in zip(grads_rev, grads_plain):
        assert torch.allclose(rev, ref, atol=1e-5)


def test_reversible_with_dropout_and_a_context_that_needs_gradients():
    reversible = ReversibleSequence(make_blocks(2, dropout=0.2, dim_context=6)).double().train()
    plain = SequentialResidual(make_blocks(2, dropout=0.2, dim_context=6)).double().train()
    plain.load_state_dict(reversible.state_dict())
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    context = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(5)
    out_rev = reversible(x, context=context)
    grads_rev = all_grads(reversible, out_rev.square().sum(), [x, context])
    after_rev = torch.rand(1)
    torch.manual_seed(5)
    out_plain = plain(x, context=context)
    grads_plain = all_grads(plain, out_plain.square().sum(), [x, context])
    after_plain = torch.rand(1)

    assert torch.allclose(out_rev, out_plain, atol=1e-10)  # the same dropout masks, in the same order
    for rev, ref in zip(grads_rev, grads_plain):
        assert torch.allclose(rev, ref, atol=1e-5)
    assert torch.equal(after_rev, after_plain)  # backward restored the global RNG


def test_reversible_memory_does_not_grow_with_depth():
    def saved_activation_elements(module_cls, depth):
        module = module_cls(make_blocks(depth))
        parameter_ids = {id(param) for param in module.parameters()}
        total = 0

        def pack(tensor):
            nonlocal total
            if id(tensor) not in parameter_ids:
                total += tensor.numel()
            return tensor

        x = torch.randn(2, 16, 8, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            module(x)
        return total

    assert saved_activation_elements(ReversibleSequence, 1) == saved_activation_elements(ReversibleSequence, 4)
    assert saved_activation_elements(SequentialResidual, 4) > 3 * saved_activation_elements(SequentialResidual, 1)


def test_reversible_runs_plainly_without_gradients_and_rejects_bad_blocks():
    reversible = ReversibleSequence(make_blocks(2))
    x = torch.randn(1, 3, 8)
    with torch.no_grad():
        out = reversible(x)
    assert torch.allclose(out, reversible(x), atol=1e-6)
    with pytest.raises(TypeError, match=r"blocks\[0\]"):
        ReversibleSequence([nn.Linear(8, 8)])


# activation checkpointing


def test_checkpointed_gives_the_same_gradients():
    block = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    x = torch.randn(3, 8, requires_grad=True)
    plain, plain_grad = grads_of(block, x)
    checked, checked_grad = grads_of(lambda t: checkpointed(block, t), x)
    assert torch.allclose(plain, checked) and torch.allclose(plain_grad[0], checked_grad[0])
    with torch.no_grad():
        assert torch.allclose(checkpointed(block, x), plain)
    assert torch.allclose(checkpointed(block, x, enabled=False), plain)
