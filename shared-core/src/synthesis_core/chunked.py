"""Memory savers: chunked feed-forward, slicing, reversible layers and activation checkpointing.

Everything here trades compute for memory and gives the same results (forward and gradients) as the plain code.
This module depends only on torch so that every other module may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "chunked_feedforward",
    "apply_in_slices",
    "ReversibleSequence",
    "SequentialResidual",
    "checkpointed",
]


def chunked_feedforward(fn: Callable[[Tensor], Tensor], x: Tensor, chunk_size: int | None, dim: int = 1) -> Tensor:
    """`fn(x)` computed on chunks of `chunk_size` along `dim` and concatenated (for position-wise `fn` only)."""
    if chunk_size is None or x.shape[dim] <= chunk_size:
        return fn(x)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size}")
    return torch.cat([fn(chunk) for chunk in x.split(chunk_size, dim=dim)], dim=dim)


def apply_in_slices(fn: Callable[[Tensor], Tensor], x: Tensor, slice_size: int | None, dim: int = 0) -> Tensor:
    """`fn(x)` computed on slices of `slice_size` along `dim` (e.g. VAE-decoding many frames a few at a time).

    `fn` must treat the slices independently; its outputs are concatenated along the same `dim`.
    """
    return chunked_feedforward(fn, x, slice_size, dim=dim)


# reversible layers


class _RandomState:
    """Records the RNG state before a call so that the backward recomputation draws the same dropout masks."""

    def __init__(self, device: torch.device):
        self.cpu_state = torch.get_rng_state()
        self.cuda_device = device if device.type == "cuda" else None
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda_device is not None else None

    def fork_and_restore(self):
        devices = [self.cuda_device] if self.cuda_device is not None else []
        context = torch.random.fork_rng(devices=devices, enabled=True)
        context.__enter__()
        torch.set_rng_state(self.cpu_state)
        if self.cuda_device is not None:
            torch.cuda.set_rng_state(self.cuda_state, self.cuda_device)
        return context


def _grad_params(module: nn.Module) -> list[Tensor]:
    return [param for param in module.parameters() if param.requires_grad]


class _ReversibleFunction(torch.autograd.Function):
    """Runs all reversible blocks without storing activations; backward rebuilds each block's input from its
    output (`x2 = y2 - g(y1)`, `x1 = y1 - f(x2)`) and backpropagates through one block at a time.

    Parameters and grad-requiring kwarg tensors are passed as extra inputs so that autograd returns their
    gradients the normal way (works with `torch.autograd.grad`, accumulation and hooks).
    """

    @staticmethod
    def forward(ctx, x, blocks, f_kwargs, g_kwargs, *grad_inputs):
        ctx.blocks = blocks
        ctx.f_kwargs = f_kwargs
        ctx.g_kwargs = g_kwargs
        ctx.random_states = []
        x1, x2 = x.chunk(2, dim=-1)
        record_rng = any(module.training for f, g in blocks for module in (f, g))
        with torch.no_grad():
            for f, g in blocks:
                f_state = _RandomState(x.device) if record_rng else None
                x1 = x1 + f(x2, **f_kwargs)
                g_state = _RandomState(x.device) if record_rng else None
                x2 = x2 + g(x1, **g_kwargs)
                ctx.random_states.append((f_state, g_state))
        y = torch.cat((x1, x2), dim=-1)
        ctx.save_for_backward(y, *grad_inputs)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, *grad_inputs = ctx.saved_tensors
        grads = {id(tensor): None for tensor in grad_inputs}

        def accumulate(tensors: Sequence[Tensor], tensor_grads: Sequence[Tensor | None]) -> None:
            for tensor, grad in zip(tensors, tensor_grads):
                if grad is not None:
                    key = id(tensor)
                    grads[key] = grad if grads[key] is None else grads[key] + grad

        # kwarg tensors that need gradients are swapped for leaves we can differentiate with respect to
        def leaf_kwargs(kwargs: dict) -> tuple[dict, list[Tensor], list[Tensor]]:
            leaves, originals, new_kwargs = [], [], {}
            for key, value in kwargs.items():
                if isinstance(value, Tensor) and value.requires_grad:
                    leaf = value.detach().requires_grad_()
                    leaves.append(leaf)
                    originals.append(value)
                    new_kwargs[key] = leaf
                else:
                    new_kwargs[key] = value
            return new_kwargs, leaves, originals

        y1, y2 = (t.detach() for t in y.chunk(2, dim=-1))
        dy1, dy2 = dy.chunk(2, dim=-1)

        for (f, g), (f_state, g_state) in zip(reversed(ctx.blocks), reversed(ctx.random_states)):
            # y2 = x2 + g(y1): gradients of g, and the extra gradient flowing into y1
            g_kwargs, g_leaves, g_originals = leaf_kwargs(ctx.g_kwargs)
            g_params = _grad_params(g)
            with torch.enable_grad():
                y1 = y1.detach().requires_grad_()
                rng = g_state.fork_and_restore() if g_state is not None else None
                try:
                    g_out = g(y1, **g_kwargs)
                finally:
                    if rng is not None:
                        rng.__exit__(None, None, None)
                g_grads = torch.autograd.grad(g_out, (y1, *g_params, *g_leaves), dy2, allow_unused=True)
            dy1 = dy1 + g_grads[0] if g_grads[0] is not None else dy1
            accumulate(g_params + g_originals, g_grads[1:])

            with torch.no_grad():
                x2 = y2 - g_out.detach()

            # y1 = x1 + f(x2)
            f_kwargs, f_leaves, f_originals = leaf_kwargs(ctx.f_kwargs)
            f_params = _grad_params(f)
            with torch.enable_grad():
                x2 = x2.detach().requires_grad_()
                rng = f_state.fork_and_restore() if f_state is not None else None
                try:
                    f_out = f(x2, **f_kwargs)
                finally:
                    if rng is not None:
                        rng.__exit__(None, None, None)
                f_grads = torch.autograd.grad(f_out, (x2, *f_params, *f_leaves), dy1, allow_unused=True)
            dx2 = dy2 + f_grads[0] if f_grads[0] is not None else dy2
            accumulate(f_params + f_originals, f_grads[1:])

            with torch.no_grad():
                x1 = y1.detach() - f_out.detach()

            y1, y2, dy1, dy2 = x1, x2.detach(), dy1, dx2

        dx = torch.cat((dy1, dy2), dim=-1)
        return (dx, None, None, None, *[grads[id(tensor)] for tensor in grad_inputs])


def _as_block_list(blocks: Sequence[tuple[nn.Module, nn.Module]]) -> nn.ModuleList:
    block_list = nn.ModuleList()
    for index, pair in enumerate(blocks):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"blocks[{index}]: expected a (f, g) pair of modules, got {type(pair).__name__}")
        block_list.append(nn.ModuleList(pair))
    return block_list


class ReversibleSequence(nn.Module):
    """Reversible residual stack (RevNet / Reformer): memory for activations independent of depth.

    `x (b, n, d)` is duplicated into two streams, each block `(f, g)` computes `x1 = x1 + f(x2, **kwargs)`,
    `x2 = x2 + g(x1, **g_kwargs)`, and the output is the mean of the streams. Gradients equal those of
    `SequentialResidual` with the same blocks (same parameter layout, so state dicts are interchangeable);
    activations are recomputed in backward, including the same dropout masks. `kwargs` go to every `f`
    (e.g. an attention mask), `g_kwargs` to every `g`. In eval / without gradients it runs as the plain stack.
    """

    def __init__(self, blocks: Sequence[tuple[nn.Module, nn.Module]]):
        super().__init__()
        self.blocks = _as_block_list(blocks)

    def forward(self, x: Tensor, g_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Tensor:
        g_kwargs = g_kwargs or {}
        blocks = [(f, g) for f, g in cast(Iterable[nn.ModuleList], self.blocks)]
        x = torch.cat((x, x), dim=-1)
        params = [param for f, g in blocks for param in (*_grad_params(f), *_grad_params(g))]
        params = list({id(param): param for param in params}.values())
        kwarg_tensors = [
            value
            for value in (*kwargs.values(), *g_kwargs.values())
            if isinstance(value, Tensor) and value.requires_grad
        ]
        grad_inputs = [*params, *kwarg_tensors]
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or len(grad_inputs) > 0)
        if needs_grad:
            x = _ReversibleFunction.apply(x, blocks, kwargs, g_kwargs, *grad_inputs)
        else:
            x1, x2 = x.chunk(2, dim=-1)
            for f, g in blocks:
                x1 = x1 + f(x2, **kwargs)
                x2 = x2 + g(x1, **g_kwargs)
            x = torch.cat((x1, x2), dim=-1)
        x1, x2 = x.chunk(2, dim=-1)
        return (x1 + x2) / 2


class SequentialResidual(nn.Module):
    """The plain (non-reversible) counterpart of `ReversibleSequence`, same blocks and parameter layout."""

    def __init__(self, blocks: Sequence[tuple[nn.Module, nn.Module]]):
        super().__init__()
        self.blocks = _as_block_list(blocks)

    def forward(self, x: Tensor, g_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Tensor:
        g_kwargs = g_kwargs or {}
        x1 = x2 = x
        for f, g in cast(Iterable[nn.ModuleList], self.blocks):
            x1 = x1 + f(x2, **kwargs)
            x2 = x2 + g(x1, **g_kwargs)
        return (x1 + x2) / 2


def checkpointed(fn: Callable[..., Any], *args: Any, enabled: bool = True, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, with activation checkpointing (non-reentrant) when `enabled` and gradients are on.

    Activations inside `fn` are recomputed in backward instead of stored. RNG state is restored for the
    recomputation (torch's default), so dropout matches.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False, **kwargs)
    return fn(*args, **kwargs)
