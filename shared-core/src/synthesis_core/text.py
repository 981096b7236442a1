"""Text conditioning: pretrained T5/BERT encoders, a small trainable encoder, and pre-computed embeddings.

- `TextEncoder(name)`: a frozen T5 (encoder only) or BERT from `transformers`, by hub name or local folder. Its
  width (`.dim`) is known without the network (a table of known names, or the folder's config.json); weights load
  on the first `encode`, one copy per device, kept inside the object: models hold a `TextEncoder` as a plain
  attribute, so its weights never enter their state dict.
  Before asking the hub for a name, a quick probe (a few seconds at most, once per process) checks that the hub
  can be reached; when it cannot, only the local cache is read, and a name missing there fails at once, and
  again at once on every later call (see `forget_text_encoder_failures`), instead of spending half a minute in
  the hub client's retries each time.
- `SimpleTextEncoder`: word-level vocabulary + a small Transformer, trained with the model (the offline demo).
- `precompute_text_embeddings` / `PrecomputedTextEmbeddings`: encode a caption list once into memory-mapped
  numpy arrays that datasets read back, so training never runs T5.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from synthesis_core.attention import Transformer
from synthesis_core.checkpoint import PretrainedMixin, atomic_write_json, read_json, register_loadable
from synthesis_core.checks import check_positive_int, check_tensor
from synthesis_core.hub import hub_offline, is_repo_id

logger = logging.getLogger(__name__)

DEFAULT_T5_NAME = "google/t5-v1_1-base"
DEFAULT_BERT_NAME = "bert-base-cased"

# widths of the encoders people use, so that building a model never needs the network
KNOWN_ENCODER_DIMS: dict[str, int] = {
    "t5-small": 512,
    "t5-base": 768,
    "t5-large": 1024,
    "t5-3b": 1024,
    "t5-11b": 1024,
    "google/t5-v1_1-small": 512,
    "google/t5-v1_1-base": 768,
    "google/t5-v1_1-large": 1024,
    "google/t5-v1_1-xl": 2048,
    "google/t5-v1_1-xxl": 4096,
    "bert-base-uncased": 768,
    "bert-base-cased": 768,
    "bert-large-uncased": 1024,
    "bert-large-cased": 1024,
}
# the hub moved the original checkpoints under their organisations; same models, same widths
for _name in ("t5-small", "t5-base", "t5-large", "t5-3b", "t5-11b"):
    KNOWN_ENCODER_DIMS[f"google-t5/{_name}"] = KNOWN_ENCODER_DIMS[_name]
for _name in ("bert-base-uncased", "bert-base-cased", "bert-large-uncased", "bert-large-cased"):
    KNOWN_ENCODER_DIMS[f"google-bert/{_name}"] = KNOWN_ENCODER_DIMS[_name]
del _name

T5_MODEL_TYPES = ("t5", "mt5", "umt5")


class TextEncoderUnavailableError(OSError):
    """The weights or tokenizer of a pretrained text encoder cannot be found (offline, or a wrong name/folder)."""


def _hub_cache_folder() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return os.path.expanduser("~/.cache/huggingface/hub")


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return "https://huggingface.co"


# ----------------------------------------------------------------------------------------------------------------
# is the hub reachable?
# ----------------------------------------------------------------------------------------------------------------

# Total time the reachability probe may take (DNS lookup + TCP connect). Without network the hub client retries
# each request with back-off (23-48 s per lookup); a working connection answers in well under a second.
HUB_PROBE_TIMEOUT_S = 3.0


def _probe_address(endpoint: str) -> tuple[str, int]:
    """`(host, port)` the hub client would connect to for `endpoint`: the proxy from the environment, if any."""
    parts = urlsplit(endpoint)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxies = urllib.request.getproxies()  # HTTPS_PROXY, ALL_PROXY, ...: what requests/httpx use too
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        default_port = 443 if proxy_parts.scheme == "https" else 1080 if proxy_parts.scheme.startswith("socks") else 80
        host, port = proxy_parts.hostname or host, proxy_parts.port or default_port
    return host, port


def _resolve(host: str, port: int, timeout: float) -> list[tuple]:
    """`socket.getaddrinfo` with a time limit (it has none of its own; a broken resolver can hang for minutes).

    The lookup runs in a daemon thread: on time-out it is abandoned (it ends when the resolver gives up) and
    never holds up the interpreter's exit.
    """
    result: dict[str, Any] = {}

    def lookup() -> None:
        try:
            result["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as err:
            result["error"] = err

    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"looking up {host} took over {timeout:g} s")
    if "error" in result:
        raise OSError(f"cannot look up {host}: {result['error']}")
    return result["addresses"]


def probe_hub(endpoint: str | None = None, timeout: float | None = None) -> str | None:
    """Checks within `timeout` seconds (default `HUB_PROBE_TIMEOUT_S`) that the hub at `endpoint` (default:
    `huggingface_hub`'s, i.e. `HF_ENDPOINT`) accepts TCP connections, through the environment's proxy if any.

    Returns None when it does, else why not (for error messages). Costs one DNS lookup and one connection.
    """
    endpoint = endpoint or _hub_endpoint()
    timeout = HUB_PROBE_TIMEOUT_S if timeout is None else timeout
    host, port = _probe_address(endpoint)
    if not host:
        return f"cannot tell the host of the hub endpoint {endpoint!r}"
    deadline = time.monotonic() + timeout
    try:
        addresses = _resolve(host, port, timeout)
    except OSError as err:
        return str(err)
    last_error: OSError | None = None
    for i, (family, kind, proto, _, address) in enumerate(addresses):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with socket.socket(family, kind, proto) as sock:
                # a share of the time each, so that a black-holed first address (often IPv6) leaves time for
                # the next one instead of making a reachable hub look unreachable
                sock.settimeout(remaining / (len(addresses) - i))
                sock.connect(address)
            return None
        except OSError as err:
            last_error = err
    if last_error is None:
        return f"cannot connect to {host}:{port} within {timeout:g} s"
    return f"cannot connect to {host}:{port}: {last_error}"


class _HubMemory:
    """What this process has learnt about getting text encoders from the hub; the one piece of mutable module
    state here, a per-process cache that `forget_text_encoder_failures()` empties.

    - per endpoint: the result of `probe_hub`, so that the probe runs once per process, not once per lookup;
    - per (encoder name, what was looked up): the message of a failed lookup from the local cache only (offline,
      or the hub unreachable), so that asking again fails at once with the same message. Such a failure is
      forgotten by itself when the encoder's files in the hub cache change (e.g. downloaded meanwhile).
    Lookups that reached the hub are never remembered: their errors come quickly and may be fixed in-process
    (e.g. `huggingface_hub.login()` for a gated model).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held during a probe: concurrent callers wait for its answer
        self._unreachable: dict[str, str | None] = {}  # endpoint -> None (reachable) or why not
        self._failures: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}  # -> (message, cache files)

    def unreachable_reason(self, endpoint: str) -> str | None:
        with self._lock:
            if endpoint not in self._unreachable:
                start = time.monotonic()
                reason = probe_hub(endpoint)
                self._unreachable[endpoint] = reason
                if reason is not None:
                    logger.warning(
                        "the Hugging Face hub %s is unreachable (%s, after %.1f s): text encoders are "
                        "read from the local cache only; set HF_HUB_OFFLINE=1 to skip this check",
                        endpoint,
                        reason,
                        time.monotonic() - start,
                    )
            return self._unreachable[endpoint]

    def failure(self, name: str, what: str) -> str | None:
        with self._lock:
            entry = self._failures.get((name, what))
            if entry is None:
                return None
            message, files = entry
            if files != _cached_files(name):  # the cache changed since: look again
                del self._failures[(name, what)]
                return None
            return message

    def remember_failure(self, name: str, what: str, message: str) -> None:
        with self._lock:
            self._failures[(name, what)] = (message, _cached_files(name))

    def clear(self) -> None:
        with self._lock:
            self._unreachable.clear()
            self._failures.clear()


_HUB_MEMORY = _HubMemory()


def forget_text_encoder_failures() -> None:
    """Forgets the remembered hub probe results and text encoder lookup failures of this process (e.g. once the
    network is back): the next lookup probes the hub again."""
    _HUB_MEMORY.clear()


def _cached_files(name: str) -> tuple[str, ...]:
    """The files of hub model `name` in the local hub cache (its snapshot folders), sorted; () when none."""
    snapshots = Path(_hub_cache_folder()) / f"models--{name.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return ()
    return tuple(sorted(str(p.relative_to(snapshots)) for p in snapshots.rglob("*")))


def _unavailable(
    name: str, err: Exception | None, what: str = "weights", unreachable: str | None = None
) -> TextEncoderUnavailableError:
    looks_like_path = name.startswith((".", "/", "~")) or (os.sep in name and Path(name).expanduser().exists())
    if looks_like_path or _local_folder(name) is not None or not is_repo_id(name):
        where = f"the folder {Path(name).expanduser().resolve()}"
    else:
        where = f"the Hugging Face cache {_hub_cache_folder()}"
        if hub_offline():
            where += " (offline: HF_HUB_OFFLINE is set)"
        elif unreachable is not None:
            where += f", and the hub {_hub_endpoint()} is unreachable ({unreachable})"
        else:
            where += " and the hub"
    message = (
        f"cannot load the {what} of text encoder {name!r}: not found in {where}. To use a local copy, "
        "download it once (e.g. `huggingface-cli download NAME` or `AutoModel.from_pretrained(NAME)"
        ".save_pretrained(FOLDER)` plus the tokenizer) and pass the folder as the encoder name, e.g. "
        "text_encoder_name='/path/to/t5-v1_1-base'."
    )
    if unreachable is not None:
        message += (
            " Without network, set HF_HUB_OFFLINE=1 so that the hub is not even tried, and pass a local "
            "folder or pre-download the encoder into the cache."
        )
    if err is not None:
        message += f" (underlying error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return TextEncoderUnavailableError(message)


def _local_folder(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if path.is_dir() else None


_T = TypeVar("_T")


def _from_folder_or_hub(
    name: str, what: str, load: Callable[[bool], _T], errors: tuple[type[Exception], ...] = (OSError, ValueError)
) -> _T:
    """`load(local_files_only)` for text encoder `name`, turning `errors` into `TextEncoderUnavailableError`.

    A local folder is read as is; a missing path fails without the hub; a hub name goes online only when the
    hub is reachable (`_HUB_MEMORY`: one quick probe per process) and HF_HUB_OFFLINE is unset, else reads the
    local cache only. A cache-only failure is remembered, so that the next call fails at once the same way.
    """
    if _local_folder(name) is not None:
        try:
            return load(True)
        except errors as err:
            raise _unavailable(name, err, what) from err
    if not is_repo_id(name):
        raise _unavailable(name, None, what)
    remembered = _HUB_MEMORY.failure(name, what)
    if remembered is not None:
        logger.debug("text encoder %r: %s lookup failed before, not trying again", name, what)
        raise TextEncoderUnavailableError(remembered)
    unreachable = None if hub_offline() else _HUB_MEMORY.unreachable_reason(_hub_endpoint())
    local_only = hub_offline() or unreachable is not None
    if local_only and not _cached_files(name):
        # nothing of it in the cache: fail here rather than in the hub client, which may still try the network
        # once per process (huggingface_hub fetches a telemetry list when building its request headers)
        error = _unavailable(name, None, what, unreachable)
        _HUB_MEMORY.remember_failure(name, what, str(error))
        raise error
    try:
        return load(local_only)
    except errors as err:
        error = _unavailable(name, err, what, unreachable)
        if local_only:
            _HUB_MEMORY.remember_failure(name, what, str(error))
        raise error from err


def _read_local_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise _unavailable(str(folder), None, what="config.json")
    return read_json(config_path)


def get_encoded_dim(name: str) -> int:
    """Width of the embeddings of text encoder `name` (hub name or local folder), without loading weights.

    Known names come from a table; a local folder's `config.json` gives `d_model` (T5) or `hidden_size` (BERT);
    other hub names read the config from the local cache (or the hub when online).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a model name or folder path, got {name!r}")
    folder = _local_folder(name)
    if folder is not None:
        config = _read_local_config(folder)
    elif name in KNOWN_ENCODER_DIMS:
        return KNOWN_ENCODER_DIMS[name]
    else:
        from transformers import AutoConfig

        config = _from_folder_or_hub(
            name, "config", lambda local_only: AutoConfig.from_pretrained(name, local_files_only=local_only).to_dict()
        )
    for key in ("d_model", "hidden_size", "dim"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ValueError(f"name: cannot tell the width of text encoder {name!r}: its config has no d_model/hidden_size")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


class TextEncoder:
    """A frozen pretrained text encoder (T5 encoder-only or BERT), loaded lazily, one copy per device.

    ```
    encoder = TextEncoder('google/t5-v1_1-base')    # or a local folder with the model and its tokenizer
    encoder.dim                                      # 768, without touching the network
    embeds, mask = encoder.encode(['a whale breaching'], device='cpu')  # (1, n, 768) float32, (1, n) bool
    ```
    Encoding always runs in float32 (T5 in fp16 overflows to NaN), also under an outer autocast, in batches of
    `batch_size`, without gradients. Padded positions of `embeds` are zero.
    """

    def __init__(self, name: str = DEFAULT_T5_NAME, max_length: int = 256, batch_size: int = 64):
        if not isinstance(name, str) or not name:
            raise TypeError(f"name: expected a hub model name or a local folder path, got {name!r}")
        check_positive_int("max_length", max_length)
        check_positive_int("batch_size", batch_size)
        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size
        self._dim: int | None = None
        self._tokenizer = None
        self._models: dict[str, nn.Module] = {}  # device -> encoder; owned by this object, freed with it

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, max_length={self.max_length})"

    # models deep-copy their submodules (EMA); the frozen encoder is shared, never duplicated
    def __deepcopy__(self, memo):
        other = TextEncoder.__new__(TextEncoder)
        other.__dict__.update(self.__dict__)
        memo[id(self)] = other
        return other

    def __getstate__(self):  # pickling (e.g. DataLoader workers) carries the settings, not the weights
        state = dict(self.__dict__)
        state["_models"] = {}
        state["_tokenizer"] = None
        return state

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = get_encoded_dim(self.name)
        return self._dim

    @property
    def loaded_devices(self) -> list[str]:
        return list(self._models)

    def unload(self) -> None:
        """Frees the loaded weights (they are loaded again on the next `encode`)."""
        self._models.clear()

    # -- loading -----------------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = _from_folder_or_hub(
                self.name,
                "tokenizer",
                lambda local_only: AutoTokenizer.from_pretrained(
                    self.name, local_files_only=local_only, trust_remote_code=False
                ),
            )
        return self._tokenizer

    def _load_model(self) -> nn.Module:
        import transformers

        config = _from_folder_or_hub(
            self.name,
            "weights",
            lambda local_only: transformers.AutoConfig.from_pretrained(self.name, local_files_only=local_only),
            errors=(OSError,),
        )
        if config.model_type in T5_MODEL_TYPES:
            model_class = getattr(transformers, f"{config.model_type.upper()}EncoderModel")
        elif getattr(config, "is_encoder_decoder", False):
            raise ValueError(
                f"name: {self.name!r} is an encoder-decoder {config.model_type!r} model; "
                "only T5-family encoders and encoder-only models (BERT) are supported"
            )
        else:
            model_class = transformers.AutoModel
        model = _from_folder_or_hub(
            self.name,
            "weights",
            # safetensors only: a pickled .bin from a stranger's folder or repo could run code when unpickled
            lambda local_only: model_class.from_pretrained(
                self.name, config=config, local_files_only=local_only, use_safetensors=True, trust_remote_code=False
            ),
            errors=(OSError,),
        )
        if self._dim is None:
            self._dim = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
        model = model.float().eval()
        model.requires_grad_(False)
        logger.info("loaded text encoder %s (%s)", self.name, type(model).__name__)
        return model

    def model(self, device: str | torch.device | None = None) -> nn.Module:
        """The encoder on `device`, loaded on first use."""
        device = _resolve_device(device)
        key = str(device)
        if key not in self._models:
            source = next(iter(self._models.values()), None)
            model = source if source is not None else self._load_model()
            if source is not None:  # another device already has it: copy rather than read the files again
                import copy

                model = copy.deepcopy(source)
            self._models[key] = model.to(device)
        return self._models[key]

    # -- encoding ----------------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str], device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
        """`(input_ids (b, n) long, mask (b, n) bool)`, padded to the longest text, truncated to max_length."""
        texts = _check_texts(texts)
        batch = self.tokenizer(
            list(texts), return_tensors="pt", padding="longest", truncation=True, max_length=self.max_length
        )
        device = _resolve_device(device)
        return batch.input_ids.to(device), batch.attention_mask.bool().to(device)

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], device: str | torch.device | None = None, batch_size: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encodes `texts`: `(embeds float32 (b, n, dim) zero at padding, mask bool (b, n))` on `device`."""
        device = _resolve_device(device)
        input_ids, mask = self.tokenize(texts, device)
        model = self.model(device)
        batch_size = batch_size or self.batch_size
        chunks = []
        with torch.autocast(device_type=device.type, enabled=False):
            for start in range(0, input_ids.shape[0], batch_size):
                ids, m = input_ids[start : start + batch_size], mask[start : start + batch_size]
                chunks.append(model(input_ids=ids, attention_mask=m.long()).last_hidden_state.float())
        embeds = torch.cat(chunks, dim=0)
        embeds = embeds.masked_fill(~rearrange(mask, "b n -> b n 1"), 0.0)
        return embeds, mask

    __call__ = encode


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts: expected a list of strings, got a single string (wrap it in a list)")
    if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts: expected a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts: expected at least one text, got an empty list")
    return list(texts)


# ----------------------------------------------------------------------------------------------------------------
# a small trainable encoder
# ----------------------------------------------------------------------------------------------------------------

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return _WORD.findall(text.lower())


def build_vocab(captions: Iterable[str], min_count: int = 1, max_size: int | None = None) -> list[str]:
    """Word-level vocabulary of `captions`: `['<pad>', '<unk>', most frequent words...]` (ties alphabetical)."""
    counts = Counter(word for caption in captions for word in split_words(caption))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max(max_size - 2, 0)]
    return [PAD_TOKEN, UNK_TOKEN, *words]


@register_loadable  # a saved model may hold one (e.g. Phenaki's text_encoder)
class SimpleTextEncoder(PretrainedMixin, nn.Module):
    """A word-level encoder trained together with the model: embedding + learned positions + a small Transformer.

    ```
    encoder = SimpleTextEncoder.from_captions(captions, dim=32, depth=2)
    ids, mask = encoder.tokenize(['a red square'])
    embeds = encoder(ids, mask)                       # (1, n, 32), zero at padding
    embeds, mask = encoder.encode(['a red square'])   # the TextEncoder interface
    ```
    """

    def __init__(
        self,
        vocab: Sequence[str],
        dim: int = 64,
        depth: int = 2,
        max_length: int = 32,
        heads: int = 4,
        dim_head: int = 16,
    ):
        super().__init__()
        vocab = list(vocab)
        if len(vocab) < 2 or vocab[0] != PAD_TOKEN or vocab[1] != UNK_TOKEN:
            raise ValueError(
                f"vocab: expected a list starting with {PAD_TOKEN!r}, {UNK_TOKEN!r} (see build_vocab), "
                f"got {vocab[:3]!r}..."
            )
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab: contains duplicate words")
        check_positive_int("dim", dim)
        check_positive_int("max_length", max_length)
        self.vocab = vocab
        self.word_to_id = {w: i for i, w in enumerate(vocab)}
        self.dim = dim
        self.max_length = max_length
        self.token_emb = nn.Embedding(len(vocab), dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_length, dim)
        self.transformer = Transformer(dim, depth, dim_head=dim_head, heads=heads, ff_mult=2)

    @classmethod
    def from_captions(
        cls,
        captions: Iterable[str],
        dim: int = 64,
        depth: int = 2,
        max_length: int = 32,
        min_count: int = 1,
        max_vocab_size: int | None = None,
        **kwargs: Any,
    ) -> SimpleTextEncoder:
        return cls(
            build_vocab(captions, min_count, max_vocab_size), dim=dim, depth=depth, max_length=max_length, **kwargs
        )

    def tokenize(self, texts: Sequence[str], device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
        """`(ids (b, n) long, mask (b, n) bool)`: unknown words map to `<unk>`, padded to the longest text."""
        texts = _check_texts(texts)
        rows = [[self.word_to_id.get(w, 1) for w in split_words(t)][: self.max_length] or [1] for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        device = device if device is not None else self.token_emb.weight.device
        ids = ids.to(device)
        return ids, ids != 0

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        check_tensor("ids", ids, ndim=2, names=("batch", "seq"))
        if ids.dtype != torch.long:
            raise TypeError(f"ids: expected a long tensor of token ids, got {ids.dtype}")
        if ids.shape[1] > self.max_length:
            raise ValueError(f"ids: expected at most max_length={self.max_length} tokens, got {ids.shape[1]}")
        if mask is None:
            mask = ids != 0
        check_tensor("mask", mask, shape=tuple(ids.shape), names=("batch", "seq"))
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_emb(ids) + self.pos_emb(positions)
        x = self.transformer(x, mask=mask)
        return x.masked_fill(~rearrange(mask, "b n -> b n 1"), 0.0)

    def encode(self, texts: Sequence[str], device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Same interface as `TextEncoder.encode` (with gradients: this encoder trains with the model)."""
        ids, mask = self.tokenize(texts, device)
        return self(ids, mask), mask


# ----------------------------------------------------------------------------------------------------------------
# pre-computed embeddings
# ----------------------------------------------------------------------------------------------------------------

EMBEDS_FILE = "embeds.npy"
MASKS_FILE = "masks.npy"
CAPTIONS_FILE = "captions.json"
INFO_FILE = "info.json"


def _token_length(encoder: Any, texts: list[str]) -> int | None:
    tokenize = getattr(encoder, "tokenize", None)
    if tokenize is None:
        return None
    _, mask = tokenize(texts)
    return int(mask.sum(-1).max())


@torch.no_grad()
def precompute_text_embeddings(
    captions: Sequence[str],
    out_folder: str | os.PathLike,
    encoder: Any,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: str = "float32",
    progress: bool = True,
) -> Path:
    """Encodes `captions` once into `out_folder/{embeds.npy, masks.npy, captions.json}` (read them back with
    `PrecomputedTextEmbeddings`). `encoder` is anything with `encode(texts, device) -> (embeds, mask)`, e.g. a
    `TextEncoder`. Embeddings are padded to the longest caption; `dtype='float16'` halves the disk space.
    """
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    captions = _check_texts(captions)
    check_positive_int("batch_size", batch_size)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype: expected 'float32' or 'float16', got {dtype!r}")
    if not callable(getattr(encoder, "encode", None)):
        raise TypeError(f"encoder: expected an object with encode(texts, device), got {type(encoder).__name__}")
    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)

    batches = [captions[i : i + batch_size] for i in range(0, len(captions), batch_size)]
    # the width of the arrays: the longest tokenised caption (one cheap tokenizer pass), else the encoder's cap
    length = max((_token_length(encoder, b) or 0) for b in batches) or getattr(encoder, "max_length", None)

    tmp_embeds, tmp_masks = out / f".{EMBEDS_FILE}.tmp", out / f".{MASKS_FILE}.tmp"
    embeds_arr: np.memmap | None = None
    masks_arr: np.memmap | None = None
    row = 0
    for batch in tqdm(batches, desc="encoding captions", disable=not progress):
        embeds, mask = encoder.encode(batch, device)
        if embeds_arr is None or masks_arr is None:
            length = length or embeds.shape[1]
            embeds_arr = open_memmap(
                tmp_embeds, mode="w+", dtype=dtype, shape=(len(captions), length, embeds.shape[-1])
            )
            masks_arr = open_memmap(tmp_masks, mode="w+", dtype=np.bool_, shape=(len(captions), length))
        n = min(embeds.shape[1], length)
        embeds_arr[row : row + len(batch)] = 0
        masks_arr[row : row + len(batch)] = False
        embeds_arr[row : row + len(batch), :n] = embeds[:, :n].detach().float().cpu().numpy().astype(dtype)
        masks_arr[row : row + len(batch), :n] = mask[:, :n].cpu().numpy()
        row += len(batch)
    if embeds_arr is None or masks_arr is None:  # not reached: _check_texts refuses an empty list
        raise ValueError("captions: expected at least one caption, got an empty list")
    embeds_arr.flush()
    masks_arr.flush()
    del embeds_arr, masks_arr
    os.replace(tmp_embeds, out / EMBEDS_FILE)
    os.replace(tmp_masks, out / MASKS_FILE)
    atomic_write_json(out / CAPTIONS_FILE, captions)
    atomic_write_json(
        out / INFO_FILE,
        {
            "encoder": getattr(encoder, "name", type(encoder).__name__),
            "num_captions": len(captions),
            "max_tokens": length,
            "dtype": dtype,
        },
    )
    return out


class PrecomputedTextEmbeddings:
    """Memory-mapped embeddings written by `precompute_text_embeddings`.

    `emb[i] -> (embeds (n, dim) float32, mask (n,) bool)`; `emb.lookup(caption)` finds a caption's row;
    `emb.batch(indices)` stacks rows. Nothing is read from disk until a row is used.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        for file in (EMBEDS_FILE, MASKS_FILE, CAPTIONS_FILE):
            if not (self.folder / file).is_file():
                raise FileNotFoundError(
                    f"folder: {self.folder} has no {file} (write it with precompute_text_embeddings)"
                )
        self.embeds = np.load(self.folder / EMBEDS_FILE, mmap_mode="r")
        self.masks = np.load(self.folder / MASKS_FILE, mmap_mode="r")
        with open(self.folder / CAPTIONS_FILE, encoding="utf-8") as f:
            self.captions: list[str] = json.load(f)
        if not (len(self.captions) == self.embeds.shape[0] == self.masks.shape[0]):
            raise ValueError(
                f"folder: {self.folder} is inconsistent: {len(self.captions)} captions, "
                f"{self.embeds.shape[0]} embeddings, {self.masks.shape[0]} masks"
            )
        self._index: dict[str, int] = {}
        for i, caption in enumerate(self.captions):
            self._index.setdefault(caption, i)

    def __len__(self) -> int:
        return len(self.captions)

    # DataLoader workers get the folder and re-open the memory maps instead of copying the arrays
    def __getstate__(self):
        state = dict(self.__dict__)
        del state["embeds"], state["masks"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.embeds = np.load(self.folder / EMBEDS_FILE, mmap_mode="r")
        self.masks = np.load(self.folder / MASKS_FILE, mmap_mode="r")

    @property
    def dim(self) -> int:
        return int(self.embeds.shape[-1])

    @property
    def max_tokens(self) -> int:
        return int(self.embeds.shape[1])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index: expected a row in [0, {len(self)}), got {index}")
        embeds = torch.from_numpy(np.array(self.embeds[index], dtype=np.float32))
        mask = torch.from_numpy(np.array(self.masks[index], dtype=np.bool_))
        return embeds, mask

    def __contains__(self, caption: str) -> bool:
        return caption in self._index

    def lookup(self, caption: str) -> tuple[Tensor, Tensor]:
        if caption not in self._index:
            raise KeyError(f"caption: {caption!r} is not among the {len(self)} pre-computed captions in {self.folder}")
        return self[self._index[caption]]

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        rows = [self[i] for i in indices]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


__all__ = [
    "DEFAULT_T5_NAME",
    "DEFAULT_BERT_NAME",
    "KNOWN_ENCODER_DIMS",
    "TextEncoderUnavailableError",
    "HUB_PROBE_TIMEOUT_S",
    "probe_hub",
    "forget_text_encoder_failures",
    "get_encoded_dim",
    "TextEncoder",
    "SimpleTextEncoder",
    "build_vocab",
    "split_words",
    "precompute_text_embeddings",
    "PrecomputedTextEmbeddings",
]
