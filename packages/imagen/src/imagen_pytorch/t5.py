"""The published imagen-pytorch module `imagen_pytorch.t5`: T5 helpers as functions, over the core's
`synthesis_core.text.TextEncoder` (frozen, loaded lazily, one copy per device, offline-aware).

```
from imagen_pytorch.t5 import t5_encode_text, get_encoded_dim
embeds, mask = t5_encode_text(["a whale breaching"], return_attn_mask=True)  # (1, n, 768), (1, n) bool
```
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

from synthesis_core.text import DEFAULT_T5_NAME, TextEncoder, get_encoded_dim

__all__ = ["DEFAULT_T5_NAME", "MAX_LENGTH", "get_encoded_dim", "t5_tokenize", "t5_encode_text"]

MAX_LENGTH = 256


@lru_cache(maxsize=4)
def _encoder(name: str) -> TextEncoder:
    # one encoder per name, as the published module kept one model per name; TextEncoder itself loads lazily
    return TextEncoder(name, max_length=MAX_LENGTH)


def t5_tokenize(
    texts: Sequence[str], name: str = DEFAULT_T5_NAME, device: str | torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Token ids `(b, n)` and their bool attention mask `(b, n)`, padded to the longest text (at most 256)."""
    return _encoder(name).tokenize(list(texts), device)


def t5_encode_text(
    texts: Sequence[str],
    name: str = DEFAULT_T5_NAME,
    return_attn_mask: bool = False,
    device: str | torch.device | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """T5 encoder embeddings `(b, n, dim)` (padding zeroed), and the bool mask `(b, n)` with `return_attn_mask`."""
    embeds, mask = _encoder(name).encode(list(texts), device)
    return (embeds, mask) if return_attn_mask else embeds
