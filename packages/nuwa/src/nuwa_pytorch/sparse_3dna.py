"""Causal 3D nearby attention (3DNA, NUWA section 3.2) over a video token sequence.

The video tokens of a `(frames, height, width)` grid are flattened in raster order `(t h w)`. The token at
`(t, y, x)` attends to the dilated window

    (t - i * dt,  y + (j - kh // 2) * dh,  x + (k - kw // 2) * dw)    for i < kt, j < kh, k < kw

(the current frame and the `kt - 1` previous ones, a centred `kh x kw` spatial window), restricted to grid
positions that exist and, causally, to positions not after the query in raster order. Each head adds a learned
bias per kernel offset `(i, j, k)` (the relative position bias: a parameter table, so any batch size and any
number of frames up to the grid work).

How it is computed (exact, no approximation): a query frame `f` only needs the key frames `f, f - dt, ...`, so
the frames are processed as a batch of `(frame, key frames)` blocks, each a single
`F.scaled_dot_product_attention` call over `kt * height * width` keys with one shared float mask that holds the
spatial window, the in-frame causality and the bias. The first frames have fewer previous frames; they form at
most `kt - 1` smaller groups with fewer key frames, so no mask ever depends on the batch. `query_num_frames_chunk`
splits the query frames further to cap the peak memory (identical outputs and gradients).

`forward_step` is the key/value-cached decoding of one new token: it gathers the (at most `kt * kh * kw`) cached
neighbours of the position and attends to those only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from synthesis_core.attention import mask_value
from synthesis_core.checks import check_positive_int, check_tensor
from synthesis_core.utils import exists

__all__ = ["Sparse3DNA", "KVCache", "to_3d", "neighbourhood_mask", "bidirectional_neighbourhood_mask"]


def to_3d(name: str, value: int | Sequence[int]) -> tuple[int, int, int]:
    """An int or a `(t, h, w)` triple of positive ints as a triple."""
    values = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name}: expected an int or a (frames, height, width) triple, got {value!r}")
    for axis, entry in zip(("frames", "height", "width"), values):
        check_positive_int(f"{name} ({axis})", entry)
    return values


class KVCache:
    """Keys and values of one attention layer for every position decoded so far, preallocated to `max_len`.

    `k`, `v`: `(batch, heads, max_len, dim_head)`; position `p` is written once, when token `p` is decoded.
    """

    def __init__(
        self, batch: int, heads: int, max_len: int, dim_head: int, *, device: torch.device, dtype: torch.dtype
    ):
        self.k = torch.zeros(batch, heads, max_len, dim_head, device=device, dtype=dtype)
        self.v = torch.zeros(batch, heads, max_len, dim_head, device=device, dtype=dtype)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def _axis_window(size: int, kernel: int, dilation: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """For query and key coordinates along one axis, `(in_window (size, size) bool, offset index (size, size))`:
    whether the key is one of the `kernel` dilated positions centred on the query, and which one."""
    coords = torch.arange(size, device=device)
    delta = coords[None, :] - coords[:, None]  # key - query
    half = (kernel // 2) * dilation
    in_window = (delta.remainder(dilation) == 0) & (delta.abs() <= half)
    offset = torch.div(delta, dilation, rounding_mode="floor") + kernel // 2
    return in_window, offset.clamp(0, kernel - 1)


def neighbourhood_mask(
    height: int,
    width: int,
    kernel_size: tuple[int, int, int],
    dilation: tuple[int, int, int],
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """The attention pattern of one query frame against its `kt` key frames, keys laid out `(slot, y, x)` where
    slot `i` is the frame `i * dt` before the query's.

    Returns `(keep (h*w, kt*h*w) bool, kernel_index (h*w, kt*h*w) long)`: whether the key is in the query's window
    (and, in slot 0, not after the query in raster order), and the flat kernel offset `i * kh * kw + j * kw + k`
    that indexes the relative position bias (meaningless where `keep` is False).
    """
    kt, kh, kw = kernel_size
    _, dh, dw = dilation
    device = torch.device(device) if device is not None else None
    in_y, off_y = _axis_window(height, kh, dh, device)
    in_x, off_x = _axis_window(width, kw, dw, device)
    # (query y, query x, key y, key x)
    spatial_keep = in_y[:, None, :, None] & in_x[None, :, None, :]
    spatial_index = off_y[:, None, :, None] * kw + off_x[None, :, None, :]
    spatial_keep = rearrange(spatial_keep, "qy qx ky kx -> (qy qx) (ky kx)")
    spatial_index = rearrange(spatial_index, "qy qx ky kx -> (qy qx) (ky kx)")

    num_positions = height * width
    positions = torch.arange(num_positions, device=device)
    not_after_query = positions[None, :] <= positions[:, None]
    slots = torch.arange(kt, device=device)
    keep = spatial_keep[:, None, :] & ((slots[None, :, None] > 0) | not_after_query[:, None, :])
    kernel_index = slots[None, :, None] * (kh * kw) + spatial_index[:, None, :]
    return rearrange(keep, "q i k -> q (i k)"), rearrange(kernel_index, "q i k -> q (i k)")


def bidirectional_neighbourhood_mask(
    video_shape: tuple[int, int, int],
    kernel_size: tuple[int, int, int],
    dilation: tuple[int, int, int],
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """The non-causal pattern over a whole `(frames, height, width)` grid: every token attends to the dilated
    window centred on it along all three axes. Returns `(keep (n, n) bool, kernel_index (n, n) long)` with
    `n = frames * height * width` in raster order (the index is meaningless where `keep` is False)."""
    frames, height, width = video_shape
    kt, kh, kw = kernel_size
    device = torch.device(device) if device is not None else None
    in_f, off_f = _axis_window(frames, kt, dilation[0], device)
    in_y, off_y = _axis_window(height, kh, dilation[1], device)
    in_x, off_x = _axis_window(width, kw, dilation[2], device)
    keep = in_f[:, None, None, :, None, None] & in_y[None, :, None, None, :, None] & in_x[None, None, :, None, None, :]
    index = (
        off_f[:, None, None, :, None, None] * (kh * kw)
        + off_y[None, :, None, None, :, None] * kw
        + off_x[None, None, :, None, None, :]
    )
    pattern = "qf qy qx kf ky kx -> (qf qy qx) (kf ky kx)"
    return rearrange(keep, pattern), rearrange(index, pattern)


class Sparse3DNA(nn.Module):
    """3D nearby self-attention over video tokens `(batch, seq, dim)` laid out `(frames height width)`: causal
    (NUWA's decoder, the default) or bidirectional (`causal=False`, e.g. an encoder).

    Args:
        dim: token dimension.
        video_shape: `(frames, height, width)` of the token grid; sequences may be shorter (a prefix).
        kernel_size: int or `(t, h, w)`; `t` frames back in time (the current one included), odd `h` and `w`.
        dilation: int or `(t, h, w)`: the step between window positions along each axis.
        heads, dim_head: attention heads.
        dropout: attention dropout (training only).
        query_num_frames_chunk: query frames per attention call (None: as many as possible), to cap memory.
        causal: True: the window looks back in time and not past the query in raster order. False: a window
            centred on the query along all three axes (odd kernel sizes), computed as one masked dense attention
            over the sequence (memory quadratic in its length) and without `forward_step`.
        rel_pos_bias: a learned logit bias per head and kernel offset (zero at init); False: plain windowed
            attention.

    `forward(x)` returns the attention output (the residual branch: the caller adds it). It equals dense causal
    attention over the whole sequence with the window mask and bias written out explicitly (see the tests), at
    a fraction of the cost.
    """

    def __init__(
        self,
        dim: int,
        video_shape: Sequence[int],
        kernel_size: int | Sequence[int] = 3,
        dilation: int | Sequence[int] = 1,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        query_num_frames_chunk: int | None = None,
        causal: bool = True,
        rel_pos_bias: bool = True,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("heads", heads)
        check_positive_int("dim_head", dim_head)
        self.video_shape = to_3d("video_shape", video_shape)
        self.kernel_size = to_3d("kernel_size", kernel_size)
        self.dilation = to_3d("dilation", dilation)
        for axis, size in zip(("height", "width"), self.kernel_size[1:]):
            if size % 2 == 0:
                raise ValueError(
                    f"kernel_size: the {axis} kernel must be odd (a window centred on the query), "
                    f"got {self.kernel_size}"
                )
        if not causal and self.kernel_size[0] % 2 == 0:
            raise ValueError(
                f"kernel_size: with causal=False the frame kernel must be odd too (a window centred on "
                f"the query), got {self.kernel_size}"
            )
        if exists(query_num_frames_chunk):
            check_positive_int("query_num_frames_chunk", query_num_frames_chunk)
        self.dim = dim
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        self.query_num_frames_chunk = query_num_frames_chunk
        self.causal = causal

        inner_dim = heads * dim_head
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)
        # one learned logit offset per head and kernel offset; zero init = plain windowed attention at the start
        self.rel_pos_bias = nn.Parameter(torch.zeros(heads, math.prod(self.kernel_size))) if rel_pos_bias else None

    @property
    def max_seq_len(self) -> int:
        return math.prod(self.video_shape)

    def _check_input(self, x: Tensor) -> None:
        check_tensor("x", x, ndim=3, shape=("batch", "seq", self.dim), names=("batch", "seq", "dim"))
        if x.shape[1] > self.max_seq_len:
            frames, height, width = self.video_shape
            raise ValueError(
                f"x: {x.shape[1]} tokens exceed the {frames} x {height} x {width} = "
                f"{self.max_seq_len} positions of the video grid"
            )

    def _bias(self, kernel_index: Tensor, dtype: torch.dtype) -> Tensor:
        """The relative position bias `(heads, *kernel_index.shape)` (zeros without `rel_pos_bias`)."""
        if self.rel_pos_bias is None:
            return torch.zeros((self.heads, *kernel_index.shape), dtype=dtype, device=kernel_index.device)
        return self.rel_pos_bias.to(dtype)[:, kernel_index]

    def frame_mask(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The float mask `(heads, h*w, kt*h*w)` of one query frame against its key frames: the relative position
        bias inside the causal window, the most negative `dtype` value outside (finite: no NaN, no overflow)."""
        _, height, width = self.video_shape
        keep, kernel_index = neighbourhood_mask(height, width, self.kernel_size, self.dilation, device)
        return torch.where(keep, self._bias(kernel_index, dtype), mask_value(dtype))

    def _forward_bidirectional(self, x: Tensor) -> Tensor:
        seq_len = x.shape[1]
        keep, kernel_index = bidirectional_neighbourhood_mask(
            self.video_shape, self.kernel_size, self.dilation, x.device
        )
        keep, kernel_index = keep[:seq_len, :seq_len], kernel_index[:seq_len, :seq_len]
        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        mask = torch.where(keep, self._bias(kernel_index, q.dtype), mask_value(q.dtype))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def _frame_groups(self, num_frames: int) -> list[tuple[int, int, int]]:
        """`(first frame, end frame, key frames)` ranges: the first frames have fewer previous frames to attend to;
        then chunks of at most `query_num_frames_chunk` frames."""
        kt, dt = self.kernel_size[0], self.dilation[0]
        chunk = self.query_num_frames_chunk or num_frames
        groups = []
        for slots in range(1, kt + 1):
            start = (slots - 1) * dt
            end = num_frames if slots == kt else min(slots * dt, num_frames)
            for chunk_start in range(start, end, chunk):
                groups.append((chunk_start, min(chunk_start + chunk, end), slots))
        return groups

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not self.causal:
            return self._forward_bidirectional(x)
        seq_len = x.shape[1]
        _, height, width = self.video_shape
        frame_len = height * width
        num_frames = -(-seq_len // frame_len)
        dt = self.dilation[0]

        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        # pad to whole frames: padded positions come after every real one, so causality already hides them
        padding = num_frames * frame_len - seq_len
        q, k, v = (
            rearrange(F.pad(t, (0, 0, 0, padding)), "b (f s) (h d) -> b f h s d", s=frame_len, h=self.heads)
            for t in (q, k, v)
        )

        mask = self.frame_mask(q.dtype, q.device)
        dropout_p = self.dropout if self.training else 0.0
        outputs = []
        for start, end, slots in self._frame_groups(num_frames):
            # key frames f, f - dt, ... for every query frame f of the group, stacked along the key axis
            keys = torch.stack([k[:, start - i * dt : end - i * dt] for i in range(slots)], dim=3)
            values = torch.stack([v[:, start - i * dt : end - i * dt] for i in range(slots)], dim=3)
            keys, values = (rearrange(t, "b c h i s d -> (b c) h (i s) d") for t in (keys, values))
            queries = rearrange(q[:, start:end], "b c h s d -> (b c) h s d")
            out = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=mask[:, :, : slots * frame_len], dropout_p=dropout_p
            )
            outputs.append(rearrange(out, "(b c) h s d -> b c h s d", c=end - start))

        out = torch.cat(outputs, dim=1)
        out = rearrange(out, "b f h s d -> b (f s) (h d)")[:, :seq_len]
        return self.to_out(out)

    # key/value-cached decoding

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        return KVCache(batch, self.heads, self.max_seq_len, self.dim_head, device=device, dtype=dtype)

    def neighbours(self, position: int, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The window of the token at `position`: `(positions (K,), valid (K,), kernel_index (K,))` for the
        `K = kt * kh * kw` kernel offsets; invalid ones (outside the grid, or after `position`) point at 0."""
        frames, height, width = self.video_shape
        kt, kh, kw = self.kernel_size
        dt, dh, dw = self.dilation
        frame, rest = divmod(position, height * width)
        row, col = divmod(rest, width)
        # plain Python over at most kt * kh * kw offsets, then one small tensor: cheaper than tensor ops per step
        key_positions, valid = [], []
        for i in range(kt):
            for j in range(kh):
                for k in range(kw):
                    key_frame, key_row, key_col = frame - i * dt, row + (j - kh // 2) * dh, col + (k - kw // 2) * dw
                    key_position = (key_frame * height + key_row) * width + key_col
                    inside = key_frame >= 0 and 0 <= key_row < height and 0 <= key_col < width
                    is_valid = inside and key_position <= position
                    key_positions.append(key_position if is_valid else 0)
                    valid.append(is_valid)
        table = torch.tensor([key_positions, valid, range(kt * kh * kw)], dtype=torch.long)
        table = table.to(device) if exists(device) else table
        return table[0], table[1].bool(), table[2]

    def forward_step(
        self, x: Tensor, position: int, cache: KVCache, neighbours: tuple[Tensor, Tensor, Tensor] | None = None
    ) -> Tensor:
        """Attention output `(batch, 1, dim)` of one new token `x (batch, 1, dim)` at sequence `position`; writes its
        key and value into `cache` (which must hold every earlier position). `neighbours`: `self.neighbours(position)`
        when the caller already has it (layers with the same window share it)."""
        check_tensor("x", x, ndim=3, shape=("batch", 1, self.dim), names=("batch", "one token", "dim"))
        if not self.causal:
            raise ValueError(
                "forward_step: token-by-token decoding needs causal=True (a bidirectional window looks at later tokens)"
            )
        if not 0 <= position < cache.max_len:
            raise ValueError(f"position: expected a position in [0, {cache.max_len}), got {position}")
        q = rearrange(self.to_q(x), "b 1 (h d) -> b h 1 d", h=self.heads)
        k, v = (rearrange(t, "b 1 (h d) -> b h d", h=self.heads) for t in self.to_kv(x).chunk(2, dim=-1))
        cache.k[:, :, position] = k.to(cache.k.dtype)
        cache.v[:, :, position] = v.to(cache.v.dtype)

        key_position, valid, kernel_index = neighbours if exists(neighbours) else self.neighbours(position, x.device)
        keys = cache.k[:, :, key_position].to(q.dtype)
        values = cache.v[:, :, key_position].to(q.dtype)
        bias = self._bias(kernel_index, q.dtype)
        mask = rearrange(torch.where(valid, bias, mask_value(q.dtype)), "h k -> h 1 k")
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.to_out(rearrange(out, "b h 1 d -> b 1 (h d)"))
