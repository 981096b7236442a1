"""The one generation protocol every top-level model implements, and the helpers its entry points share.

Every top-level model of the packages (Imagen, ElucidatedImagen, GaussianDiffusion, MakeAVideo, Phenaki, NUWA) is a
`GenerativeModel`:

```
loss = model(videos, texts=captions)                 # training: a scalar loss to backpropagate
loss = model(videos, text_embeds=embeds, text_mask=mask, cond_drop_prob=0.1)
videos = model.sample(texts=prompts, cond_scale=3., generator=torch.Generator().manual_seed(0))
model.save_pretrained('ckpt/'); same = type(model).from_pretrained('ckpt/')
```

- Videos are `(batch, channels, frames, height, width)` floats in [0, 1] (the pixel rule of `checks.check_pixels`:
  uint8 and [-1, 1] batches are read too). Image models also take images `(batch, channels, height, width)`.
- Text is `texts` (captions, for models with their own text encoder; token ids `(batch, tokens)` for a model that
  only reads token ids, NUWA), or `text_embeds (batch, tokens, dim)` with an optional bool `text_mask
  (batch, tokens)`. `cond_drop_prob` drops the text of each training sample (the null branch of classifier-free
  guidance); it is also every model's constructor keyword for the default.
- `sample(...)` returns `(batch, channels, frames, height, width)` in [0, 1]. Image models (an Imagen of 2D U-Nets)
  return images `(batch, channels, height, width)`, i.e. one frame without its axis; `as_videos` adds it.
  `generator` makes sampling reproducible: the same seed gives the same videos. `steps` / `sampler` raise a
  ValueError on a model where they do not apply; nothing is accepted and ignored.

The names of the seed READMEs stay as aliases of these (`cond=`, `null_cond_prob=`, `text_masks=`, `text=`,
`use_tqdm=`, `cond_dropout_prob=`, ...); `resolve_text` and `resolve_alias` read them the same way in every package.

The second half of the module is the token sampling shared by the token models (Phenaki's MaskGIT, NUWA):
Gumbel noise from an optional generator, and top-k filtered Gumbel-max sampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from synthesis_core.checks import check_in_range, check_temperature, check_tensor

__all__ = [
    "GenerativeModel",
    "TextInput",
    "resolve_text",
    "resolve_alias",
    "reject_argument",
    "as_videos",
    "gumbel_noise",
    "sample_tokens",
]


@runtime_checkable
class GenerativeModel(Protocol):
    """What every top-level model offers (see the module docstring for the meaning of each argument).

    `isinstance(model, GenerativeModel)` checks that the entry points exist; their keywords are tested by the
    project's conformance test (`tests/test_protocol.py`). Models add their own keywords after these (e.g. Imagen's
    `unet_number`, Phenaki's `prime_frames`).
    """

    def forward(
        self,
        videos: Tensor,
        *,
        texts: Any = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        cond_drop_prob: float | None = None,
    ) -> Tensor:
        """The training loss of a batch of videos (or images) in [0, 1], a scalar."""
        ...

    def sample(
        self,
        *,
        texts: Any = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        num_frames: int | None = None,
        batch_size: int | None = None,
        cond_scale: float | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
    ) -> Tensor:
        """Videos `(batch, channels, frames, height, width)` (images: `(batch, channels, height, width)`) in [0, 1]."""
        ...

    def save_pretrained(self, folder: Any, *args: Any, **kwargs: Any) -> Any: ...

    @classmethod
    def from_pretrained(cls, folder: Any, *args: Any, **kwargs: Any) -> Any: ...


# ---------------------------------------------------------------------------------------------------------------
# argument resolution


def resolve_alias(name: str, value: Any, alias: str, alias_value: Any, default: Any = None) -> Any:
    """The value of an argument that also has a seed-README name: `value` if given, else `alias_value`, else
    `default`. Both given (not None) and different is a ValueError naming both."""
    if value is not None and alias_value is not None:
        if value is alias_value or _same(value, alias_value):
            return value
        raise ValueError(
            f"{alias}: an alias of {name}; pass one of them, not both (got {name}={value!r}, {alias}={alias_value!r})"
        )
    if value is not None:
        return value
    return alias_value if alias_value is not None else default


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values without a usable == are simply different
        return False


def reject_argument(name: str, value: Any, reason: str) -> None:
    """A protocol keyword that does not apply to this model: a ValueError saying why when it is given."""
    if value is not None:
        raise ValueError(f"{name}: {reason}; got {name}={value!r}")


@dataclass(frozen=True)
class TextInput:
    """The text condition of one call, resolved: at most one of `texts` (captions), `token_ids (b, n)` integers and
    `text_embeds (b, n, d)` (with an optional bool `text_mask (b, n)`) is set."""

    texts: list[str] | None = None
    token_ids: Tensor | None = None
    text_embeds: Tensor | None = None
    text_mask: Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        if self.texts is not None:
            return len(self.texts)
        for tensor in (self.token_ids, self.text_embeds):
            if tensor is not None:
                return int(tensor.shape[0])
        return None

    @property
    def is_empty(self) -> bool:
        return self.batch_size is None

    def repeat_to(self, batch: int) -> TextInput:
        """One condition repeated for a batch of `batch` (a condition of batch 1 only)."""
        if self.batch_size in (None, batch):
            return self
        if self.batch_size != 1:
            raise ValueError(f"batch_size: the text condition holds {self.batch_size} samples, got batch_size={batch}")

        def rep(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.expand(batch, *t.shape[1:])

        return TextInput(
            texts=self.texts * batch if self.texts is not None else None,
            token_ids=rep(self.token_ids),
            text_embeds=rep(self.text_embeds),
            text_mask=rep(self.text_mask),
        )


def resolve_text(
    texts: Any = None,
    text_embeds: Tensor | None = None,
    text_mask: Tensor | None = None,
    *,
    aliases: Mapping[str, tuple[str, Any]] | None = None,
    token_ids: bool = False,
    strings: bool = True,
    strings_hint: str = "",
) -> TextInput:
    """Read the text arguments of an entry point, seed aliases included, into one `TextInput`.

    `aliases` maps a seed name to `(protocol name, value)`, e.g. `{"text_masks": ("text_mask", text_masks)}`;
    the protocol name `"texts_or_embeds"` sends strings to `texts` and a tensor to `text_embeds` (video-diffusion's
    `cond=`). A single string is one caption. `token_ids=True`: the model reads integer token ids `(b, n)` as
    `texts`; `strings=False`: the model has no tokenizer, and captions raise a TypeError ending in `strings_hint`.
    """
    values = {"texts": texts, "text_embeds": text_embeds, "text_mask": text_mask}
    for alias, (target, value) in (aliases or {}).items():
        if value is None:
            continue
        if target == "texts_or_embeds":
            target = "text_embeds" if isinstance(value, Tensor) else "texts"
        if target not in values:
            raise ValueError(f"aliases: {alias} points to {target!r}, expected texts, text_embeds or text_mask")
        if values[target] is not None:
            raise ValueError(f"{alias}: an alias of {target}; pass one of them, not both")
        values[target] = value
    texts, text_embeds, text_mask = values["texts"], values["text_embeds"], values["text_mask"]

    ids = None
    if isinstance(texts, Tensor):
        if not token_ids:
            raise TypeError(
                "texts: expected a list of strings (one caption per sample), got a tensor; pass "
                "embeddings as text_embeds=(batch, tokens, dim)"
            )
        check_tensor("texts", texts, ndim=2, names=("batch", "tokens"))
        if texts.is_floating_point() or texts.dtype == torch.bool:
            raise TypeError(f"texts: expected integer token ids (batch, tokens), got dtype {texts.dtype}")
        ids, texts = texts, None
    elif texts is not None:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(text, str) for text in texts):
            raise TypeError(f"texts: expected a list of strings (one caption per sample), got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("texts: expected at least one caption, got an empty list")
        if not strings:
            raise TypeError(f"texts: this model reads token ids, not strings{strings_hint}")
        texts = list(texts)

    if text_embeds is not None:
        if texts is not None or ids is not None:
            raise ValueError("texts: pass either texts or text_embeds, not both")
        if not isinstance(text_embeds, Tensor):
            raise TypeError(
                f"text_embeds: expected a float tensor (batch, tokens, dim), got {type(text_embeds).__name__}"
            )
    if text_mask is not None:
        if text_embeds is None:
            raise ValueError(
                "text_mask: only used with text_embeds (captions and token ids are masked by the tokenizer)"
            )
        check_tensor("text_mask", text_mask, shape=tuple(text_embeds.shape[:2]), names=("batch", "tokens"))
        text_mask = text_mask.bool()
    return TextInput(texts=texts, token_ids=ids, text_embeds=text_embeds, text_mask=text_mask)


def as_videos(samples: Tensor) -> Tensor:
    """Samples as videos `(b, c, t, h, w)`: images `(b, c, h, w)` become one-frame videos."""
    check_tensor("samples", samples, ndim=(4, 5))
    return samples.unsqueeze(2) if samples.ndim == 4 else samples


# ---------------------------------------------------------------------------------------------------------------
# token sampling (Phenaki's MaskGIT, NUWA)


def gumbel_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel noise shaped like `like` (float32, on its device); drawn on the generator's device when one is
    given, so a CPU generator gives the same noise whatever the model's device."""
    # torch.rand of the shape (not rand_like): an expanded (stride 0) input still gets independent noise per entry
    device = generator.device if generator is not None else like.device
    uniform = torch.rand(like.shape, generator=generator, device=device).to(like.device)
    return -torch.log((-torch.log(uniform.clamp(1e-20, 1.0))).clamp(min=1e-20))


def sample_tokens(
    logits: Tensor,
    temperature: float = 1.0,
    *,
    filter_thres: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per position of `logits (..., num_tokens)` by Gumbel-max at `temperature` (0: greedy).

    `filter_thres` keeps only the best `(1 - filter_thres)` fraction of the vocabulary (top-k, at least one token).
    """
    check_temperature("temperature", temperature)
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if filter_thres is not None:
        check_in_range("filter_thres", filter_thres, 0.0, 1.0)
        k = max(int((1 - filter_thres) * logits.shape[-1]), 1)
        values, indices = logits.topk(k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)
    return (logits / temperature + gumbel_noise(logits, generator)).argmax(dim=-1)
