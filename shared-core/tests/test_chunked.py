"""synthesis_core.chunked: every memory saver gives the plain results (forward and gradients) for less memory."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from synthesis_core.attention import Attention
from synthesis_core.chunked import (
    ReversibleSequence,
    SequentialResidual,
    apply_in_slices,
    checkpointed,
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
        (
            AttentionBranch(dim, dim_context=dim_context, dropout=dropout),
            FeedForward(dim, mult=2, dropout=dropout, pre_norm=True),
        )
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
