import copy
import pickle
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from synthesis_core.text import (
    DEFAULT_BERT_NAME,
    DEFAULT_T5_NAME,
    PrecomputedTextEmbeddings,
    SimpleTextEncoder,
    TextEncoder,
    TextEncoderUnavailableError,
    build_vocab,
    forget_text_encoder_failures,
    get_encoded_dim,
    precompute_text_embeddings,
    probe_hub,
)

CAPTIONS = [
    "a whale breaching from afar",
    "young girl blowing out candles on her birthday cake",
    "a squirrel examines an acorn",
    "a red square moving left",
]


def test_known_widths_need_no_network(monkeypatch):
    import transformers

    def no_network(*args, **kwargs):
        raise AssertionError("the network/config loader must not be touched")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_network)
    expected = {
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
    for name, dim in expected.items():
        assert get_encoded_dim(name) == dim, name
    assert TextEncoder().dim == 768 and TextEncoder().name == DEFAULT_T5_NAME
    assert TextEncoder(DEFAULT_BERT_NAME).dim == 768


def _reference_encoding(model, tokenizer, text):
    ids = tokenizer([text], return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state[0]


@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_encode_local_folder(kind, request):
    import transformers

    folder = request.getfixturevalue(f"tiny_{kind}")
    encoder = TextEncoder(folder, max_length=64, batch_size=2)
    assert encoder.dim == 32 and encoder.loaded_devices == []  # width from config.json, nothing loaded yet

    embeds, mask = encoder.encode(CAPTIONS, device="cpu")
    assert encoder.loaded_devices == ["cpu"]
    assert embeds.dtype == torch.float32 and mask.dtype == torch.bool
    assert embeds.shape[:2] == mask.shape and embeds.shape[0] == len(CAPTIONS) and embeds.shape[2] == 32
    assert (embeds[~mask] == 0).all() and mask.any(-1).all()

    # each caption equals its own unpadded encoding: padding and batching change nothing
    model_class = transformers.T5EncoderModel if kind == "t5" else transformers.AutoModel
    reference_model = model_class.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    for i, caption in enumerate(CAPTIONS):
        reference = _reference_encoding(reference_model, tokenizer, caption)
        assert mask[i].sum() == reference.shape[0]
        torch.testing.assert_close(embeds[i, : reference.shape[0]], reference, rtol=1e-5, atol=1e-5)

    # float32 also under an outer bf16 autocast, and truncation to max_length
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again, _ = encoder.encode(CAPTIONS)
    assert again.dtype == torch.float32
    torch.testing.assert_close(again, embeds)
    short, short_mask = TextEncoder(folder, max_length=4).encode(CAPTIONS)
    assert short.shape[1] == 4 and short_mask.shape == (len(CAPTIONS), 4)


def test_encoder_is_not_part_of_a_models_state_and_is_shared_by_copies(tiny_t5):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = TextEncoder(tiny_t5)
            self.proj = nn.Linear(32, 8)

    model = Model()
    model.text_encoder.encode(["a cat"])
    assert set(model.state_dict()) == {"proj.weight", "proj.bias"}
    clone = copy.deepcopy(model)  # what EMA does
    assert clone.text_encoder.model("cpu") is model.text_encoder.model("cpu")
    restored = pickle.loads(pickle.dumps(model.text_encoder))
    assert restored.loaded_devices == [] and restored.dim == 32


def test_missing_model_gives_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(TextEncoderUnavailableError, match="no-such-model") as info:
        TextEncoder(str(missing)).encode(["a cat"])
    assert "folder" in str(info.value) and "text_encoder_name" in str(info.value)

    encoder = TextEncoder("google/t5-v1_1-small")  # offline (conftest), not in the cache
    assert encoder.dim == 512
    with pytest.raises(TextEncoderUnavailableError, match="google/t5-v1_1-small") as info:
        encoder.encode(["a cat"])
    assert "HF_HUB_OFFLINE" in str(info.value) and "cache" in str(info.value)
    with pytest.raises(TextEncoderUnavailableError):
        get_encoded_dim(str(missing))
    with pytest.raises(TypeError, match="texts"):
        encoder.encode("a single string")


def test_simple_text_encoder_tokenize_forward_and_training(tmp_path):
    vocab = build_vocab(CAPTIONS)
    assert vocab[:2] == ["<pad>", "<unk>"] and vocab[2] == "a"  # most frequent word first
    encoder = SimpleTextEncoder.from_captions(CAPTIONS, dim=16, depth=1, max_length=12, heads=2, dim_head=8)
    ids, mask = encoder.tokenize(["a red square", "a zebra moving left quickly"])
    assert ids.shape == (2, 5) and mask.tolist()[0] == [True] * 3 + [False] * 2
    assert ids[1, 1] == 1  # 'zebra' is unknown

    encoder.eval()
    embeds = encoder(ids, mask)
    assert embeds.shape == (2, 5, 16) and (embeds[0, 3:] == 0).all()
    alone, _ = encoder.encode(["a red square"])
    torch.testing.assert_close(alone[0], embeds[0, :3], rtol=1e-5, atol=1e-5)  # padding does not leak

    # it trains: tell apart captions by a pooled linear probe
    encoder.train()
    probe = nn.Linear(16, 2)
    opt = torch.optim.Adam([*encoder.parameters(), *probe.parameters()], lr=1e-2)
    texts, labels = ["a red square", "a blue circle"], torch.tensor([0, 1])
    losses = []
    for _ in range(30):
        embeds, mask = encoder.encode(texts)
        logits = probe(embeds.sum(1) / mask.sum(1, keepdim=True))
        loss = nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]

    encoder.save_pretrained(tmp_path / "enc")
    loaded = SimpleTextEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.vocab == encoder.vocab
    encoder.eval()
    loaded.eval()
    torch.testing.assert_close(loaded.encode(texts)[0], encoder.encode(texts)[0])

    with pytest.raises(ValueError, match="vocab"):
        SimpleTextEncoder(["a", "b"])
    with pytest.raises(ValueError, match="max_length"):
        encoder(torch.ones(1, 13, dtype=torch.long))


def test_precompute_round_trip(tmp_path, tiny_t5):
    encoder = TextEncoder(tiny_t5)
    captions = CAPTIONS + [CAPTIONS[0]]
    folder = precompute_text_embeddings(captions, tmp_path / "emb", encoder, batch_size=2, progress=False)
    stored = PrecomputedTextEmbeddings(folder)
    assert len(stored) == 5 and stored.dim == 32 and stored.captions == captions
    full, full_mask = encoder.encode(captions)
    assert stored.max_tokens == full.shape[1]  # padded to the longest caption over all batches
    for i, caption in enumerate(captions):
        embeds, mask = stored[i]
        assert torch.equal(mask, full_mask[i])
        torch.testing.assert_close(embeds, full[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stored.lookup(caption)[0], full[i], rtol=1e-5, atol=1e-5)
    embeds, masks = stored.batch([0, 2])
    assert embeds.shape == (2, stored.max_tokens, 32) and masks.dtype == torch.bool
    assert CAPTIONS[1] in stored and "unknown" not in stored
    with pytest.raises(KeyError, match="caption"):
        stored.lookup("unknown")
    copy_in_worker = pickle.loads(pickle.dumps(stored))
    assert torch.equal(copy_in_worker[3][0], stored[3][0])

    half = PrecomputedTextEmbeddings(
        precompute_text_embeddings(captions, tmp_path / "half", encoder, dtype="float16", progress=False)
    )
    torch.testing.assert_close(half[1][0], full[1], rtol=1e-2, atol=1e-2)
    with pytest.raises(FileNotFoundError, match="embeds.npy"):
        PrecomputedTextEmbeddings(tmp_path)


# -- no network, HF_HUB_OFFLINE unset ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_hub_memory():
    forget_text_encoder_failures()  # the per-process memory of probe results and failed lookups
    yield
    forget_text_encoder_failures()


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset, an empty hub cache, and DNS that hangs for `hang_s` then fails (a broken resolver).

    Yields the list of looked-up hosts: every DNS lookup anywhere in the process lands there.
    """
    import huggingface_hub.constants

    from synthesis_core import text

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read from the environment at import
    # huggingface_hub itself looks up the hub once per process for telemetry (an agent list, when it builds request
    # headers, even for cache-only reads); that is not this code's doing, keep it out of the counts and timings
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(text, "HUB_PROBE_TIMEOUT_S", 1.0)
    lookups: list[str] = []
    released = threading.Event()

    def hanging_getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        released.wait(5.0)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    yield lookups
    released.set()  # lets an abandoned lookup thread finish


def test_unreachable_hub_fails_fast_once_and_remembers(no_network, monkeypatch):
    import transformers

    start = time.monotonic()
    with pytest.raises(TextEncoderUnavailableError, match="google/t5-v1_1-small") as info:
        TextEncoder("google/t5-v1_1-small").encode(["a cat"])
    assert time.monotonic() - start < 6.0  # the probe's 1 s, not the hub client's retries (23-48 s)
    message = str(info.value)
    assert "unreachable" in message and "HF_HUB_OFFLINE=1" in message and "cache" in message
    assert "folder" in message
    assert no_network == ["huggingface.co"]  # one probe; the cache-only lookup made no request

    # the failure is remembered: the next call neither probes nor asks transformers, and says the same
    def must_not_load(*args, **kwargs):
        raise AssertionError("the remembered failure must be raised without loading again")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", must_not_load)
    start = time.monotonic()
    with pytest.raises(TextEncoderUnavailableError) as again:
        TextEncoder("google/t5-v1_1-small").encode(["a dog"])
    assert time.monotonic() - start < 0.5
    assert str(again.value) == message

    # another encoder: the probe result is remembered too, the cache-only lookup fails quickly
    start = time.monotonic()
    with pytest.raises(TextEncoderUnavailableError, match="someone/unknown-encoder") as info:
        get_encoded_dim("someone/unknown-encoder")
    assert time.monotonic() - start < 2.0 and "unreachable" in str(info.value)
    assert no_network == ["huggingface.co"]

    # a path is never looked up on the hub
    with pytest.raises(TextEncoderUnavailableError, match="folder"):
        TextEncoder("/no/such/folder/t5").encode(["a cat"])
    assert no_network == ["huggingface.co"]

    forget_text_encoder_failures()
    with pytest.raises(TextEncoderUnavailableError):
        get_encoded_dim("someone/unknown-encoder")
    assert no_network == ["huggingface.co"] * 2  # probed again after forgetting


def _put_in_hub_cache(folder: str, cache: Path, name: str) -> None:
    """Lays out `folder` as `huggingface-cli download NAME` would in the hub cache `cache`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{name.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_cached_encoder_loads_without_network_and_without_the_variable(no_network, tiny_t5, tmp_path):
    encoder = TextEncoder("t5-small")
    with pytest.raises(TextEncoderUnavailableError, match="t5-small"):
        encoder.encode(["a cat"])

    _put_in_hub_cache(tiny_t5, tmp_path / "hub", "t5-small")  # downloaded meanwhile: the failure is forgotten
    start = time.monotonic()
    embeds, mask = encoder.encode(["a cat", "a red square moving left"])
    assert time.monotonic() - start < 5.0  # before: minutes, the hub client retrying every file
    assert embeds.shape[0] == 2 and embeds.shape[2] == 32 and mask.dtype == torch.bool
    assert no_network == ["huggingface.co"]
    torch.testing.assert_close(embeds, TextEncoder(tiny_t5).encode(["a cat", "a red square moving left"])[0])


def test_reachable_hub_is_asked_and_its_errors_are_not_remembered(monkeypatch):
    import huggingface_hub.constants
    import transformers

    from synthesis_core import text

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    probes, calls = [], []
    monkeypatch.setattr(text, "probe_hub", lambda endpoint: probes.append(endpoint))  # None: reachable

    def from_pretrained(name, **kwargs):
        calls.append(kwargs["local_files_only"])
        raise OSError(f"{name} is not a valid model identifier (401)")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    for _ in range(2):  # e.g. a gated model: `huggingface_hub.login()` in between may fix it
        with pytest.raises(TextEncoderUnavailableError, match="someone/gated") as info:
            get_encoded_dim("someone/gated")
    assert calls == [False, False] and len(probes) == 1  # online both times, probed once
    assert "unreachable" not in str(info.value)


def test_probe_hub_connects_with_a_time_limit(monkeypatch):
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert probe_hub(f"http://127.0.0.1:{port}", timeout=2.0) is None
        # through a proxy from the environment, as the hub client would
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_PROXY", "")
        assert probe_hub("https://hub.invalid", timeout=2.0) is None
        monkeypatch.delenv("HTTPS_PROXY")
    reason = probe_hub(f"http://127.0.0.1:{port}", timeout=2.0)  # the server is gone
    assert reason is not None and f"127.0.0.1:{port}" in reason

    released = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: released.wait(10.0))
    start = time.monotonic()
    reason = probe_hub("https://huggingface.co", timeout=0.5)
    released.set()
    assert time.monotonic() - start < 1.5 and "huggingface.co" in reason and "0.5 s" in reason
