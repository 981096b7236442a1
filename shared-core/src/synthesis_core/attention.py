"""Attention for every model of the project, all of it on `F.scaled_dot_product_attention` (SDPA).

Reading order: the mask builder and `attend` (one SDPA call with masks and biases merged into a single additive
float mask), position encodings (rotary, T5 buckets, continuous MLP bias), `Attention` (self / cross, causal,
null key-values, qk-norm), the video and feature-map variants (`SpaceTimeAttention`, `LinearAttention`),
then the stacks (`PerceiverResampler`, `TransformerBlock`, `Transformer`).

Conventions: tokens are `(b, n, dim)`, heads are split as `(b, h, n, dim_head)`, boolean masks are True = keep,
biases are additive to the attention logits, `(h, i, j)` or `(b, h, i, j)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from synthesis_core.checks import check_choice, check_divisible, check_positive_int, check_tensor
from synthesis_core.chunked import checkpointed
from synthesis_core.layers import ChannelLayerNorm, FeedForward, LayerNorm
from synthesis_core.utils import default, exists, l2norm

__all__ = [
    "mask_value",
    "build_attn_mask",
    "attend",
    "RotaryEmbedding",
    "apply_rotary_emb",
    "rotate_half",
    "T5RelativePositionBias",
    "ContinuousPositionBias",
    "Attention",
    "SpaceTimeAttention",
    "LinearAttention",
    "PerceiverResampler",
    "TransformerBlock",
    "Transformer",
]


# masks and the SDPA call


def mask_value(dtype: torch.dtype) -> float:
    """The additive value for masked logits: the most negative finite number of `dtype`.

    Finite rather than -inf so that a row where every key is masked yields a (uniform, finite) average instead of
    the NaN that SDPA produces for all -inf rows.
    """
    return -torch.finfo(dtype).max


def build_attn_mask(
    q_len: int,
    k_len: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    key_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    causal: bool = False,
    num_null_kv: int = 0,
) -> Tensor | None:
    """Merge a key padding mask, a causal mask and an additive bias into one float mask for SDPA, or None.

    `k_len` counts the `num_null_kv` null keys that come first: they are never masked and get no bias.
    `key_mask`: bool `(b, k_len - num_null_kv)` or `(b, q_len, k_len - num_null_kv)`, True = attend.
    `attn_bias`: float `(h, q_len, k)` or `(b, h, q_len, k)` with `k` = the keys without the null ones.
    Causal masking is aligned bottom-right (the last query sees every key), which is top-left when q_len == k_len.
    The mask is built in `dtype` (the query dtype, so bf16 under autocast) and broadcast, never expanded.
    """
    real_k_len = k_len - num_null_kv
    keep = None

    if exists(key_mask):
        key_mask = key_mask.bool()
        key_mask = (
            rearrange(key_mask, "b j -> b 1 1 j") if key_mask.ndim == 2 else rearrange(key_mask, "b i j -> b 1 i j")
        )
        keep = key_mask

    if causal:
        query_positions = torch.arange(q_len, device=device) + (real_k_len - q_len)
        key_positions = torch.arange(real_k_len, device=device)
        causal_keep = key_positions[None, :] <= query_positions[:, None]
        keep = causal_keep if keep is None else keep & causal_keep

    if keep is not None and num_null_kv > 0:
        keep = F.pad(keep, (num_null_kv, 0), value=True)

    if exists(attn_bias):
        bias = attn_bias.to(dtype)
        if bias.ndim == 3:
            bias = rearrange(bias, "h i j -> 1 h i j")
        if num_null_kv > 0:
            bias = F.pad(bias, (num_null_kv, 0), value=0.0)
        if keep is None:
            return bias
        return torch.where(keep, bias, mask_value(dtype))

    if keep is None:
        return None
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(keep, zero, mask_value(dtype))


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    key_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    causal: bool = False,
    num_null_kv: int = 0,
    dropout_p: float = 0.0,
    scale: float | None = None,
    flash: bool = True,
) -> Tensor:
    """SDPA over `(b, h, n, d)` queries and `(b, h, m, d)` keys/values with masks and bias merged into one float mask.

    Plain causal self-attention without any mask or bias keeps SDPA's `is_causal` fast path. `flash=False` forces
    the reference math kernel (for debugging and numerics comparisons).
    """
    q_len, k_len = q.shape[-2], k.shape[-2]
    use_is_causal = causal and key_mask is None and attn_bias is None and num_null_kv == 0 and q_len == k_len
    attn_mask = None
    if not use_is_causal:
        attn_mask = build_attn_mask(
            q_len,
            k_len,
            dtype=q.dtype,
            device=q.device,
            key_mask=key_mask,
            attn_bias=attn_bias,
            causal=causal,
            num_null_kv=num_null_kv,
        )
    if flash:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=use_is_causal, scale=scale
        )
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=use_is_causal, scale=scale
        )


# rotary embeddings


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) over `dim` feature channels (pairs of adjacent channels rotate together).

    `forward(seq_len or positions) -> freqs (n, dim)`; rotate queries and keys with `apply_rotary_emb(freqs, t)`.
    `dim` may be smaller than the head dimension: only the first `dim` channels are rotated.
    """

    inv_freq: Tensor

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        check_positive_int("dim", dim)
        check_divisible("dim", dim, 2)
        self.dim = dim
        self.theta = theta
        # deterministic from the config: not stored in checkpoints, and recomputed in float32 in forward so that
        # casting the model to bf16 / fp16 never degrades the angles
        self.register_buffer("inv_freq", self._inv_freq(torch.device("cpu")), persistent=False)

    def _inv_freq(self, device: torch.device) -> Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim
        return 1.0 / (self.theta**exponents)

    def forward(self, seq_len_or_positions: int | Tensor, device: torch.device | str | None = None) -> Tensor:
        if device is None:
            device = self.inv_freq.device
        if isinstance(seq_len_or_positions, Tensor):
            positions = seq_len_or_positions.to(device=device, dtype=torch.float32)
        else:
            positions = torch.arange(seq_len_or_positions, device=device, dtype=torch.float32)
        freqs = positions[..., None] * self._inv_freq(positions.device)
        return repeat(freqs, "... d -> ... (d r)", r=2)


def rotate_half(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the 90 degree rotation of each adjacent pair."""
    x = rearrange(x, "... (d r) -> ... d r", r=2)
    x1, x2 = x.unbind(dim=-1)
    return rearrange(torch.stack((-x2, x1), dim=-1), "... d r -> ... (d r)")


def apply_rotary_emb(freqs: Tensor, t: Tensor) -> Tensor:
    """Rotate the first `freqs.shape[-1]` channels of `t (..., n, d)` by the angles `freqs (n, rot_dim)`.

    Computed in float32 and returned in `t`'s dtype; channels beyond `rot_dim` pass through unchanged.
    """
    rot_dim = freqs.shape[-1]
    if rot_dim > t.shape[-1]:
        raise ValueError(f"freqs: rotary dim {rot_dim} exceeds the feature dim {t.shape[-1]} of t")
    seq_len = t.shape[-2]
    freqs = freqs[..., -seq_len:, :]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    t_float = t_rot.float()
    t_rot = t_float * freqs.cos() + rotate_half(t_float) * freqs.sin()
    return torch.cat((t_rot.to(t.dtype), t_pass), dim=-1)


# relative position biases


class T5RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias: one learned scalar per (bucket, head).

    Relative distances below `num_buckets // 2` (halved again when not causal, for the two directions) get their
    own bucket; larger ones share logarithmically spaced buckets up to `max_distance`.
    `forward(n)` -> `(heads, n, n)`; `forward(i, j)` -> `(heads, i, j)` with queries aligned to the last keys.
    """

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 128, causal: bool = False):
        super().__init__()
        self.heads = heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.causal = causal
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    @staticmethod
    def relative_position_bucket(
        relative_position: Tensor, causal: bool = False, num_buckets: int = 32, max_distance: int = 128
    ) -> Tensor:
        """Bucket index of `relative_position = key_position - query_position` (long tensor, any shape)."""
        n = -relative_position
        bucket = torch.zeros_like(n)
        if not causal:
            num_buckets //= 2
            bucket = bucket + (n < 0).long() * num_buckets
            n = n.abs()
        else:
            n = n.clamp(min=0)
        max_exact = num_buckets // 2
        is_small = n < max_exact
        # log-spaced buckets for distances in [max_exact, max_distance); clamp avoids log(0) for small ones
        val_if_large = (
            max_exact
            + (
                torch.log(n.float().clamp(min=1) / max_exact)
                / math.log(max_distance / max_exact)
                * (num_buckets - max_exact)
            ).long()
        )
        val_if_large = val_if_large.clamp(max=num_buckets - 1)
        return bucket + torch.where(is_small, n, val_if_large)

    def forward(
        self, i: int, j: int | torch.device | str | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        if isinstance(j, (torch.device, str)):
            j, device = None, j
        j = default(j, i)
        if device is None:
            device = self.relative_attention_bias.weight.device
        query_positions = torch.arange(j - i, j, dtype=torch.long, device=device)
        key_positions = torch.arange(j, dtype=torch.long, device=device)
        relative_position = key_positions[None, :] - query_positions[:, None]
        buckets = self.relative_position_bucket(
            relative_position, causal=self.causal, num_buckets=self.num_buckets, max_distance=self.max_distance
        )
        bias = self.relative_attention_bias(buckets)
        return rearrange(bias, "i j h -> h i j")


class ContinuousPositionBias(nn.Module):
    """Relative position bias from a small MLP over the (log-)relative offsets along 1 to 3 axes (Swin v2 style).

    `forward(*dimension_sizes)` -> `(heads, N, N)` with `N = prod(dimension_sizes)` and positions flattened in
    row-major order (e.g. `(t, h, w)`). The MLP runs once per distinct offset (`prod(2 * size - 1)` rows, not N^2)
    and the result is gathered, so any size works, including ones never seen in training.
    """

    def __init__(self, dim: int, heads: int, num_dims: int = 1, layers: int = 2, log_distance: bool = True):
        super().__init__()
        check_positive_int("num_dims", num_dims)
        if num_dims > 3:
            raise ValueError(f"num_dims: expected 1, 2 or 3 axes, got {num_dims}")
        self.num_dims = num_dims
        self.log_distance = log_distance
        net = [nn.Linear(num_dims, dim), nn.SiLU()]
        for _ in range(layers - 1):
            net += [nn.Linear(dim, dim), nn.SiLU()]
        net.append(nn.Linear(dim, heads))
        self.net = nn.Sequential(*net)

    def forward(self, *dimension_sizes: int, device: torch.device | str | None = None) -> Tensor:
        if len(dimension_sizes) != self.num_dims:
            raise ValueError(
                f"dimension_sizes: this ContinuousPositionBias has num_dims={self.num_dims}, "
                f"got {len(dimension_sizes)} sizes {dimension_sizes}"
            )
        if device is None:
            device = next(self.net.parameters()).device

        # every distinct offset along each axis, -(size - 1) .. size - 1, as an MLP input grid
        offsets = [torch.arange(-(size - 1), size, device=device) for size in dimension_sizes]
        offset_grid = torch.stack(torch.meshgrid(*offsets, indexing="ij"), dim=-1)
        offset_grid = rearrange(offset_grid, "... c -> (...) c").float()
        if self.log_distance:
            offset_grid = torch.sign(offset_grid) * torch.log(offset_grid.abs() + 1)
        bias_table = self.net(offset_grid)

        # flat index into the table of (query position - key position) for every pair, built axis by axis
        # (row-major over the offset grid: the last axis varies fastest)
        flat_index = torch.zeros((), dtype=torch.long, device=device)
        for axis, size in enumerate(dimension_sizes):
            coordinate = torch.arange(size, device=device)
            relative = coordinate[:, None] - coordinate[None, :] + (size - 1)  # in [0, 2 * size - 2]
            position_shape = [1] * self.num_dims
            position_shape[axis] = size
            relative = relative.reshape(*position_shape, *position_shape)
            flat_index = flat_index * (2 * size - 1) + relative
        num_positions = math.prod(dimension_sizes)
        flat_index = flat_index.expand(*dimension_sizes, *dimension_sizes).reshape(num_positions, num_positions)

        bias = bias_table[flat_index]
        return rearrange(bias, "i j h -> h i j")


# attention


class Attention(nn.Module):
    """Multi-head self- or cross-attention on `F.scaled_dot_product_attention`.

    `forward(x (b, n, dim), context=None (b, m, dim_context), mask=None, attn_bias=None, rotary_emb=None)`:
    - self-attention when `context` is None; `mask` (b, n|m) or (b, n, n|m), bool, True = keep, masks keys;
    - `causal=True` masks future keys (bottom-right aligned when keys outnumber queries);
    - `num_null_kv` learned key/values are prepended: never masked, so a fully masked row stays well defined;
    - `qk_norm=True`: l2-normalised queries and keys (cosine similarity) times a learned per-head temperature;
    - `attn_bias` (h|b h, n, n|m) is added to the logits; all masks and biases become one float `attn_mask`;
    - `rotary_emb`: freqs from `RotaryEmbedding` for queries and keys (a `(q_freqs, k_freqs)` pair for
      cross-attention).
    `pre_norm=True` applies a `LayerNorm` to `x` (and `norm_context=True` to the context) first.
    """

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        dim_context: int | None = None,
        causal: bool = False,
        num_null_kv: int = 0,
        qk_norm: bool = False,
        dropout: float = 0.0,
        flash: bool = True,
        *,
        qk_norm_scale: float = 10.0,
        dim_out: int | None = None,
        pre_norm: bool = False,
        norm_context: bool = False,
        zero_init_output: bool = False,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("dim_head", dim_head)
        check_positive_int("heads", heads)
        check_positive_int("num_null_kv", num_null_kv, allow_zero=True)
        self.dim = dim
        self.dim_context = default(dim_context, dim)
        self.heads = heads
        self.dim_head = dim_head
        self.causal = causal
        self.num_null_kv = num_null_kv
        self.qk_norm = qk_norm
        self.dropout = dropout
        self.flash = flash
        inner_dim = dim_head * heads

        self.norm = LayerNorm(dim) if pre_norm else nn.Identity()
        self.context_norm = LayerNorm(self.dim_context) if norm_context else nn.Identity()

        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(self.dim_context, inner_dim * 2, bias=False)
        self.null_kv = nn.Parameter(torch.randn(2, heads, num_null_kv, dim_head)) if num_null_kv > 0 else None
        # cosine-similarity logits lie in [-1, 1]: a learned temperature restores a useful softmax sharpness
        self.qk_scale = nn.Parameter(torch.full((heads, 1, 1), qk_norm_scale)) if qk_norm else None

        self.to_out = nn.Linear(inner_dim, default(dim_out, dim), bias=False)
        if zero_init_output:
            nn.init.zeros_(self.to_out.weight)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        rotary_emb: Tensor | tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        check_tensor("x", x, ndim=3, shape=("batch", None, self.dim), names=("batch", "seq", "dim"))
        batch, seq_len = x.shape[:2]
        if exists(context):
            check_tensor(
                "context", context, shape=(batch, None, self.dim_context), names=("batch", "context_seq", "dim_context")
            )
        elif self.dim_context != self.dim:
            raise ValueError(
                f"context: this Attention was built for cross-attention (dim_context={self.dim_context}), "
                "pass context=(batch, context_seq, dim_context)"
            )
        kv_len = context.shape[1] if exists(context) else seq_len
        if exists(mask):
            expected = (batch, kv_len) if mask.ndim == 2 else (batch, seq_len, kv_len)
            check_tensor("mask", mask, shape=expected, names=("batch", "query_seq", "key_seq")[-len(expected) :])
        if exists(attn_bias):
            check_tensor("attn_bias", attn_bias, ndim=(3, 4))
            if attn_bias.shape[-2:] != (seq_len, kv_len) or attn_bias.shape[-3] not in (1, self.heads):
                raise ValueError(
                    f"attn_bias: expected shape ({self.heads}, {seq_len}, {kv_len}) or "
                    f"(batch, {self.heads}, {seq_len}, {kv_len}), got {tuple(attn_bias.shape)}"
                )

        x = self.norm(x)
        kv_input = self.context_norm(context) if exists(context) else x

        q = self.to_q(x)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))

        if rotary_emb is not None:
            if isinstance(rotary_emb, (tuple, list)):
                q_freqs, k_freqs = rotary_emb
            elif exists(context):
                raise ValueError("rotary_emb: for cross-attention pass a (q_freqs, k_freqs) pair")
            else:
                q_freqs = k_freqs = rotary_emb
            q = apply_rotary_emb(q_freqs, q)
            k = apply_rotary_emb(k_freqs, k)

        if exists(self.null_kv):
            null_k, null_v = repeat(self.null_kv.to(k.dtype), "kv h n d -> kv b h n d", b=batch)
            k = torch.cat((null_k, k), dim=-2)
            v = torch.cat((null_v, v), dim=-2)

        scale = None
        if self.qk_norm:
            q, k = l2norm(q), l2norm(k)
            q = q * cast(Tensor, self.qk_scale).to(q.dtype)
            scale = 1.0

        out = attend(
            q,
            k,
            v,
            key_mask=mask,
            attn_bias=attn_bias,
            causal=self.causal,
            num_null_kv=self.num_null_kv,
            dropout_p=self.dropout if self.training else 0.0,
            scale=scale,
            flash=self.flash,
        )
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out)


class SpaceTimeAttention(nn.Module):
    """Factorised video attention on `(b, c, t, h, w)`: over h*w within each frame (`axis='space'`) or over t at
    each pixel (`axis='time'`), with an optional cross-attention to a context afterwards.

    Returns the residual branch only (the caller adds it to `x`), or `x` plus the branch when `residual=True`.
    `enabled=False`, or `skip_mask[i]=True` for batch item i ("focus on the present"), turns a *time* module into
    the identity for those items: the returned branch is exactly zero there (`x` itself when `residual=True`).
    The space module ignores both switches.
    `pos_bias`: None, 't5' (time only), 'continuous' (2D over (h, w) for space, 1D for time) or 'rotary'
    (axial over rows and columns for space, 1D for time). A pre-norm LayerNorm over channels is built in.
    """

    def __init__(
        self,
        dim: int,
        axis: str = "space",
        dim_head: int = 64,
        heads: int = 8,
        pos_bias: str | None = None,
        causal: bool = False,
        dim_context: int | None = None,
        num_null_kv: int = 0,
        zero_init_output: bool = False,
        *,
        qk_norm: bool = False,
        dropout: float = 0.0,
        residual: bool = False,
    ):
        super().__init__()
        check_choice("axis", axis, ("space", "time"))
        check_choice("pos_bias", pos_bias, (None, "t5", "continuous", "rotary"))
        if axis == "space" and causal:
            raise ValueError("causal: causal attention is only defined along time; use axis='time'")
        if axis == "space" and pos_bias == "t5":
            raise ValueError("pos_bias: 't5' is a 1D bias; for axis='space' use 'continuous' or 'rotary'")
        self.dim = dim
        self.axis = axis
        self.heads = heads
        self.pos_bias_kind = pos_bias
        self.residual = residual

        self.norm = LayerNorm(dim)
        self.attn = Attention(
            dim,
            dim_head=dim_head,
            heads=heads,
            causal=causal,
            num_null_kv=num_null_kv,
            qk_norm=qk_norm,
            dropout=dropout,
            zero_init_output=zero_init_output,
        )

        num_axes = 2 if axis == "space" else 1
        self.pos_bias: T5RelativePositionBias | ContinuousPositionBias | None = None
        self.rotary_emb: RotaryEmbedding | None = None
        if pos_bias == "t5":
            self.pos_bias = T5RelativePositionBias(heads, causal=causal)
        elif pos_bias == "continuous":
            self.pos_bias = ContinuousPositionBias(max(dim // 4, 16), heads, num_dims=num_axes)
        elif pos_bias == "rotary":
            # axial for space: the first half of each head's channels rotates with the row, the second with the column
            rotary_dim = dim_head // num_axes
            rotary_dim -= rotary_dim % 2
            self.rotary_emb = RotaryEmbedding(rotary_dim)

        self.cross_norm = LayerNorm(dim) if exists(dim_context) else None
        self.cross_attn = (
            Attention(
                dim,
                dim_head=dim_head,
                heads=heads,
                dim_context=dim_context,
                num_null_kv=num_null_kv,
                qk_norm=qk_norm,
                dropout=dropout,
                zero_init_output=zero_init_output,
            )
            if exists(dim_context)
            else None
        )

    def _position_kwargs(self, sizes: Sequence[int], device: torch.device) -> dict:
        if exists(self.pos_bias):
            return {"attn_bias": self.pos_bias(*sizes, device=device)}
        if exists(self.rotary_emb):
            if len(sizes) == 1:
                return {"rotary_emb": self.rotary_emb(sizes[0], device=device)}
            height, width = sizes
            rows = repeat(self.rotary_emb(height, device=device), "h d -> (h w) d", w=width)
            cols = repeat(self.rotary_emb(width, device=device), "w d -> (h w) d", h=height)
            return {"rotary_emb": torch.cat((rows, cols), dim=-1)}
        return {}

    def forward(
        self,
        x: Tensor,
        enabled: bool = True,
        skip_mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        check_tensor(
            "x",
            x,
            shape=("batch", self.dim, None, None, None),
            names=("batch", "channels", "frames", "height", "width"),
        )
        batch, _, frames, height, width = x.shape
        is_time = self.axis == "time"
        if is_time and not enabled:
            return x if self.residual else torch.zeros_like(x)
        if exists(skip_mask):
            check_tensor("skip_mask", skip_mask, shape=(batch,), names=("batch",))
        if exists(context) and not exists(self.cross_attn):
            raise ValueError("context: this SpaceTimeAttention was built without dim_context, cannot cross-attend")

        if is_time:
            tokens = rearrange(x, "b c t h w -> (b h w) t c")
            sizes: tuple[int, ...] = (frames,)
        else:
            tokens = rearrange(x, "b c t h w -> (b t) (h w) c")
            sizes = (height, width)

        out = self.attn(self.norm(tokens), **self._position_kwargs(sizes, x.device))

        if is_time:
            out = rearrange(out, "(b h w) t c -> b c t h w", b=batch, h=height, w=width)
        else:
            out = rearrange(out, "(b t) (h w) c -> b c t h w", b=batch, h=height)

        if self.cross_attn is not None and self.cross_norm is not None and exists(context):
            # the context is the same for every token of a video: attend with all t*h*w tokens as one query sequence
            hidden = rearrange(x + out, "b c t h w -> b (t h w) c")
            cross = self.cross_attn(self.cross_norm(hidden), context=context, mask=context_mask)
            out = out + rearrange(cross, "b (t h w) c -> b c t h w", t=frames, h=height)

        if is_time and exists(skip_mask):
            out = torch.where(rearrange(skip_mask.bool(), "b -> b 1 1 1 1"), torch.zeros_like(out), out)

        return x + out if self.residual else out


class LinearAttention(nn.Module):
    """Linear (efficient) attention for `(b, c, h, w)` feature maps, O(h*w): softmax over the feature dim for
    queries and over positions for keys, then `q (k^T v)`. Videos `(b, c, t, h, w)` are processed per frame.

    Has a channel pre-norm and a normalised output projection; returns the residual branch only.
    """

    def __init__(self, dim: int, dim_head: int = 32, heads: int = 8, pre_norm: bool = True):
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.scale = dim_head**-0.5
        inner_dim = dim_head * heads
        self.norm = ChannelLayerNorm(dim) if pre_norm else nn.Identity()
        self.to_qkv = nn.Conv2d(dim, inner_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(inner_dim, dim, 1, bias=False), ChannelLayerNorm(dim))

    def _forward_2d(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        x = self.norm(x)
        q, k, v = self.to_qkv(x).chunk(3, dim=1)
        q, k, v = (rearrange(t, "b (h d) x y -> b h d (x y)", h=self.heads) for t in (q, k, v))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("b h d n, b h e n -> b h d e", k, v)
        out = torch.einsum("b h d e, b h d n -> b h e n", context, q)
        out = rearrange(out, "b h e (x y) -> b (h e) x y", x=height, y=width)
        return self.to_out(out)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, ndim=(4, 5))
        if x.shape[1] != self.dim:
            raise ValueError(f"x: expected {self.dim} channels in dim 1, got shape {tuple(x.shape)}")
        if x.ndim == 4:
            return self._forward_2d(x)
        frames = x.shape[2]
        out = self._forward_2d(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(out, "(b t) c h w -> b c t h w", t=frames)


# stacks


class PerceiverResampler(nn.Module):
    """Resamples a variable-length sequence `(b, n, dim)` to a fixed set of latents
    `(b, num_latents + num_latents_mean_pooled, dim)` (Flamingo). The latents cross-attend to the sequence and
    themselves; `num_latents_mean_pooled` extra latents come from the masked mean of the sequence.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        dim_head: int = 64,
        heads: int = 8,
        num_latents: int = 64,
        num_latents_mean_pooled: int = 4,
        max_seq_len: int = 512,
        ff_mult: float = 4,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.max_seq_len = max_seq_len
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.to_latents_from_mean_pooled = (
            nn.Sequential(
                LayerNorm(dim),
                nn.Linear(dim, dim * num_latents_mean_pooled),
                nn.Unflatten(-1, (num_latents_mean_pooled, dim)),
            )
            if num_latents_mean_pooled > 0
            else None
        )
        self.layers = nn.ModuleList([])
        for _ in range(depth):
            self.layers.append(
                nn.ModuleDict(
                    {
                        "norm_media": LayerNorm(dim),
                        "norm_latents": LayerNorm(dim),
                        "attn": Attention(dim, dim_head=dim_head, heads=heads, qk_norm=qk_norm),
                        "ff": FeedForward(dim, mult=ff_mult, pre_norm=True),
                    }
                )
            )
        self.norm = LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        check_tensor("x", x, ndim=3, shape=("batch", None, self.dim), names=("batch", "seq", "dim"))
        batch, seq_len = x.shape[:2]
        if seq_len > self.max_seq_len:
            raise ValueError(f"x: sequence length {seq_len} exceeds max_seq_len={self.max_seq_len}")
        if exists(mask):
            check_tensor("mask", mask, shape=(batch, seq_len), names=("batch", "seq"))

        x = x + self.pos_emb(torch.arange(seq_len, device=x.device))
        latents = repeat(self.latents.to(x.dtype), "n d -> b n d", b=batch)

        if exists(self.to_latents_from_mean_pooled):
            if exists(mask):
                weights = mask.to(x.dtype)[..., None]
                pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            else:
                pooled = x.mean(dim=1)
            latents = torch.cat((self.to_latents_from_mean_pooled(pooled).to(latents.dtype), latents), dim=1)

        num_latents = latents.shape[1]
        # the latents attend to the media and to themselves (the latent keys are never masked)
        kv_mask = F.pad(mask.bool(), (0, num_latents), value=True) if exists(mask) else None
        for layer in cast(Iterable[nn.ModuleDict], self.layers):
            media = layer["norm_media"](x)
            normed_latents = layer["norm_latents"](latents)
            context = torch.cat((media, normed_latents), dim=1)
            latents = latents + layer["attn"](normed_latents, context=context, mask=kv_mask)
            latents = latents + layer["ff"](latents)
        return self.norm(latents)


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention (when `dim_context` is given), feed-forward."""

    def __init__(
        self,
        dim: int,
        dim_head: int = 64,
        heads: int = 8,
        dim_context: int | None = None,
        causal: bool = False,
        ff_mult: float = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        num_null_kv: int = 0,
        qk_norm: bool = False,
        ff_chunk_size: int | None = None,
    ):
        super().__init__()
        self.attn_norm = LayerNorm(dim)
        self.attn = Attention(
            dim,
            dim_head=dim_head,
            heads=heads,
            causal=causal,
            num_null_kv=num_null_kv,
            qk_norm=qk_norm,
            dropout=attn_dropout,
        )
        self.cross_attn_norm = LayerNorm(dim) if exists(dim_context) else None
        self.cross_attn = (
            Attention(
                dim,
                dim_head=dim_head,
                heads=heads,
                dim_context=dim_context,
                num_null_kv=num_null_kv,
                qk_norm=qk_norm,
                dropout=attn_dropout,
                norm_context=True,
            )
            if exists(dim_context)
            else None
        )
        self.ff_norm = LayerNorm(dim)
        self.ff = FeedForward(dim, mult=ff_mult, dropout=ff_dropout, chunk_size=ff_chunk_size)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        rotary_emb: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), mask=mask, attn_bias=attn_bias, rotary_emb=rotary_emb)
        if self.cross_attn is not None and self.cross_attn_norm is not None:
            if context is None:
                raise ValueError("context: this block was built with dim_context and needs a context to attend to")
            x = x + self.cross_attn(self.cross_attn_norm(x), context=context, mask=context_mask)
        elif exists(context):
            raise ValueError("context: this block was built without dim_context, cannot cross-attend")
        return x + self.ff(self.ff_norm(x))


class Transformer(nn.Module):
    """A stack of pre-norm `TransformerBlock`s with a final norm, on `(b, n, dim)`.

    `pos_bias`: None, 't5' or 'continuous' (one bias module shared by all layers); `rotary=True` adds rotary
    embeddings over each head's channels. `num_null_kv` null key/values are learned by every attention layer. `checkpoint=True` uses
    activation checkpointing for each block while training.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        dim_context: int | None = None,
        causal: bool = False,
        ff_mult: float = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        num_null_kv: int = 0,
        qk_norm: bool = False,
        pos_bias: str | None = None,
        rotary: bool = False,
        *,
        ff_chunk_size: int | None = None,
        checkpoint: bool = False,
    ):
        super().__init__()
        check_positive_int("depth", depth)
        check_choice("pos_bias", pos_bias, (None, "t5", "continuous"))
        self.dim = dim
        self.heads = heads
        self.checkpoint = checkpoint
        self.pos_bias: T5RelativePositionBias | ContinuousPositionBias | None = None
        if pos_bias == "t5":
            self.pos_bias = T5RelativePositionBias(heads, causal=causal)
        elif pos_bias == "continuous":
            self.pos_bias = ContinuousPositionBias(max(dim // 4, 16), heads, num_dims=1)
        self.rotary_emb = RotaryEmbedding(dim_head - dim_head % 2) if rotary else None
        self.layers = nn.ModuleList(
            [
                TransformerBlock(
                    dim,
                    dim_head=dim_head,
                    heads=heads,
                    dim_context=dim_context,
                    causal=causal,
                    ff_mult=ff_mult,
                    attn_dropout=attn_dropout,
                    ff_dropout=ff_dropout,
                    num_null_kv=num_null_kv,
                    qk_norm=qk_norm,
                    ff_chunk_size=ff_chunk_size,
                )
                for _ in range(depth)
            ]
        )
        self.norm = LayerNorm(dim)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        check_tensor("x", x, ndim=3, shape=("batch", None, self.dim), names=("batch", "seq", "dim"))
        seq_len = x.shape[1]
        if exists(self.pos_bias):
            position_bias = self.pos_bias(seq_len, device=x.device)
            attn_bias = position_bias if attn_bias is None else attn_bias + position_bias
        rotary_emb = self.rotary_emb(seq_len, device=x.device) if exists(self.rotary_emb) else None

        for block in self.layers:
            x = checkpointed(
                block,
                x,
                enabled=self.checkpoint and self.training,
                mask=mask,
                context=context,
                context_mask=context_mask,
                attn_bias=attn_bias,
                rotary_emb=rotary_emb,
            )
        return self.norm(x)
