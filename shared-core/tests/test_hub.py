"""Models shared on the Hugging Face Hub, offline: `from_pretrained("org/name")` reads a Hub cache laid out as
`huggingface_hub` lays it out (built here by hand and by `cache_model_folder`), through the same safe path as a
local folder; `push_to_hub` uploads config + safetensors + a model card (`HfApi` is replaced by a recorder).

No test here can reach the network: HF_HUB_OFFLINE is set (conftest) and every socket connection fails.
"""

import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from synthesis_core import hub
from synthesis_core.checkpoint import (
    CheckpointError,
    PretrainedMixin,
    load_model_from_folder,
    package_info,
    register_loadable,
)

REPO = "some-org/tiny-model"
POPEN_PATH = "synthesis_core.checks.torch.ctypes.util.subprocess.Popen"


@register_loadable(name="tests.hub.TinyHubModel")
class TinyHubModel(PretrainedMixin, nn.Module):
    def __init__(self, dim: int = 4, hidden: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every attempt to open a connection fails the test, whatever the offline settings."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to reach the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def online_settings(monkeypatch):
    """HF_HUB_OFFLINE unset (in the environment and in huggingface_hub, which read it at import): only
    `local_files_only=True` keeps loading off the network here (and `no_network` would catch it if not)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert not hub.hub_offline()


def write_snapshot_by_hand(
    cache_dir: Path, repo_id: str, files: dict[str, bytes], *, commit: str, refs: tuple[str, ...] = ("main",)
) -> Path:
    """The layout of a real download: blobs named by content hash, snapshot files linking to them, refs."""
    storage = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (storage / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    (storage / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def trained(seed: int) -> TinyHubModel:
    torch.manual_seed(seed)
    return TinyHubModel(dim=4, hidden=6)


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    assert type(a) is type(b) and a.config == b.config
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a(x), b(x))


def test_loads_from_a_hand_made_hub_cache_with_local_files_only(tmp_path, monkeypatch, online_settings):
    model = trained(0)
    model.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "cache"
    write_snapshot_by_hand(cache, REPO, folder_files(tmp_path / "saved"), commit="a" * 40)
    loaded = TinyHubModel.from_pretrained(REPO, cache_dir=cache, local_files_only=True)
    assert_same_model(model, loaded)
    assert_same_model(model, load_model_from_folder(REPO, cache_dir=cache, local_files_only=True))
    # without local_files_only (and with the network gone) the hub client falls back to the cache only when
    # told to be offline: here that is HF_HUB_OFFLINE, set again
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_same_model(model, TinyHubModel.from_pretrained(REPO, cache_dir=cache))


def test_hf_hub_offline_reads_the_cache_and_revisions_pick_the_snapshot(tmp_path):
    assert hub.hub_offline()  # conftest
    first, second = trained(0), trained(1)
    for name, model in (("first", first), ("second", second)):
        model.save_pretrained(tmp_path / name)
    cache = tmp_path / "cache"
    write_snapshot_by_hand(cache, REPO, folder_files(tmp_path / "first"), commit="1" * 40, refs=("main",))
    write_snapshot_by_hand(cache, REPO, folder_files(tmp_path / "second"), commit="2" * 40, refs=("v1",))
    assert_same_model(first, TinyHubModel.from_pretrained(REPO, cache_dir=cache))
    assert_same_model(second, TinyHubModel.from_pretrained(REPO, cache_dir=cache, revision="v1"))
    assert_same_model(second, TinyHubModel.from_pretrained(REPO, cache_dir=cache, revision="2" * 40))
    with pytest.raises(FileNotFoundError, match=r"some-org/tiny-model' at revision 'v2' is not in the Hub cache"):
        TinyHubModel.from_pretrained(REPO, cache_dir=cache, revision="v2")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        TinyHubModel.from_pretrained("some-org/absent", cache_dir=cache)


def test_cache_model_folder_writes_what_huggingface_hub_reads(tmp_path):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    model = trained(2)
    model.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "cache"
    snapshot = hub.cache_model_folder(tmp_path / "saved", REPO, cache_dir=cache, revision="release")
    found = try_to_load_from_cache(REPO, "model.safetensors", cache_dir=cache, revision="release")
    assert Path(found) == snapshot / "model.safetensors"
    assert (snapshot / "model.safetensors").is_symlink()
    (repo,) = scan_cache_dir(cache).repos
    assert repo.repo_id == REPO and {ref for revision in repo.revisions for ref in revision.refs} == {"release"}
    assert_same_model(model, TinyHubModel.from_pretrained(REPO, cache_dir=cache, revision="release"))
    # the same files give the same commit; a new version under another name leaves the first one loadable
    assert hub.cache_model_folder(tmp_path / "saved", REPO, cache_dir=cache, revision="release") == snapshot
    newer = trained(3)
    newer.save_pretrained(tmp_path / "newer")
    hub.cache_model_folder(tmp_path / "newer", REPO, cache_dir=cache)
    assert_same_model(newer, TinyHubModel.from_pretrained(REPO, cache_dir=cache))
    assert_same_model(model, TinyHubModel.from_pretrained(REPO, cache_dir=cache, revision="release"))
    with pytest.raises(ValueError, match="revision"):
        hub.cache_model_folder(tmp_path / "saved", REPO, cache_dir=cache, revision="../escape")
    with pytest.raises(FileNotFoundError, match="lacks"):
        hub.cache_model_folder(tmp_path / "cache", REPO, cache_dir=cache)


def test_a_local_folder_of_the_same_name_wins(tmp_path, monkeypatch):
    in_cache, local = trained(0), trained(1)
    in_cache.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "cache"
    hub.cache_model_folder(tmp_path / "saved", REPO, cache_dir=cache)
    monkeypatch.chdir(tmp_path)
    local.save_pretrained(Path(REPO))  # ./some-org/tiny-model
    assert_same_model(local, TinyHubModel.from_pretrained(REPO, cache_dir=cache))
    with pytest.raises(ValueError, match="revision: .* is a local folder"):
        TinyHubModel.from_pretrained(REPO, cache_dir=cache, revision="main")
    shutil.rmtree(tmp_path / "some-org")
    assert_same_model(in_cache, TinyHubModel.from_pretrained(REPO, cache_dir=cache))


def test_paths_are_never_sent_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("a path was looked up on the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    for missing in (tmp_path / "absent", str(tmp_path / "absent"), "./absent", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="config.json"):
            TinyHubModel.from_pretrained(missing)
    with pytest.raises(TypeError, match="name_or_path"):
        TinyHubModel.from_pretrained(3)
    with pytest.raises(TypeError, match="local_files_only"):
        TinyHubModel.from_pretrained(REPO, local_files_only="yes")
    with pytest.raises(TypeError, match="revision"):
        TinyHubModel.from_pretrained(REPO, revision=1)


def test_online_lookups_ask_only_for_the_model_files(tmp_path, monkeypatch, online_settings):
    """What the hub client is asked for when online: the two files of a model folder, nothing else."""
    import huggingface_hub

    model = trained(4)
    model.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    loaded = TinyHubModel.from_pretrained(REPO, revision="v3", token="hf_secret", cache_dir=tmp_path / "c")
    assert_same_model(model, loaded)
    ((repo_id, kwargs),) = calls
    assert repo_id == REPO and kwargs["revision"] == "v3" and kwargs["token"] == "hf_secret"
    assert kwargs["cache_dir"] == tmp_path / "c" and kwargs["local_files_only"] is False
    assert sorted(kwargs["allow_patterns"]) == ["config.json", "model.safetensors"]


def test_crafted_hub_repos_are_refused_like_local_folders(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    marker = tmp_path / "pwned"
    weights = (trained(0).save_pretrained(tmp_path / "good") / "model.safetensors").read_bytes()
    cache = tmp_path / "cache"
    crafted = {
        "top": {"class": POPEN_PATH, "config": {"args": ["sh", "-c", f"touch {marker}"]}},
        "nested": {
            "class": "tests.hub.TinyHubModel",
            "config": {"dim": {"__class__": "logging.FileHandler", "config": {"filename": str(victim), "mode": "w"}}},
        },
        "unknown-key": {"class": "tests.hub.TinyHubModel", "config": {"dim": 4, "evil": 1}},
    }
    for index, (name, document) in enumerate(crafted.items()):
        files = {"config.json": json.dumps(document).encode(), "model.safetensors": weights}
        write_snapshot_by_hand(cache, f"evil/{name}", files, commit=f"{index}" * 40)
        local = tmp_path / "local" / name
        local.mkdir(parents=True)
        for file_name, data in files.items():
            (local / file_name).write_bytes(data)
        for load in (TinyHubModel.from_pretrained, load_model_from_folder):
            with pytest.raises(CheckpointError) as from_hub:
                load(f"evil/{name}", cache_dir=cache)
            with pytest.raises(CheckpointError) as from_folder:
                load(local)
            # the same refusal, naming the same key; only the folder differs
            assert str(from_hub.value).split(" in ")[0] == str(from_folder.value).split(" in ")[0]
    assert not marker.exists() and victim.read_text() == "precious"

    # a repo of pickles only: never unpickled, refused before anything is built
    def no_unpickling(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    good_config = (tmp_path / "good" / "config.json").read_bytes()
    pickled = {"config.json": good_config, "pytorch_model.bin": b"\x80\x04K\x01."}
    write_snapshot_by_hand(cache, "evil/pickle", pickled, commit="f" * 40)
    for load in (TinyHubModel.from_pretrained, load_model_from_folder):
        with pytest.raises(FileNotFoundError, match="only loaded from safetensors"):
            load("evil/pickle", cache_dir=cache)


def test_push_to_hub_uploads_the_folder_with_a_model_card(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    uploads: list[dict] = []
    created: list[tuple] = []

    def create_repo(self, repo_id, **kwargs):
        created.append(("repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        created.append(("branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        uploads.append({**kwargs, "files": folder_files(folder)})
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    model = trained(5)
    assert model.push_to_hub(REPO, token="hf_x", private=True, commit_message="first") == "commit-info"
    assert created == [("repo", REPO, {"token": "hf_x", "private": True, "repo_type": "model", "exist_ok": True})]
    (upload,) = uploads
    assert upload["repo_id"] == REPO and upload["commit_message"] == "first" and upload["revision"] is None
    assert upload["create_pr"] is False and upload["token"] == "hf_x"
    assert set(upload["files"]) == {"config.json", "model.safetensors", "README.md"}

    card = ModelCard(upload["files"]["README.md"].decode())
    distribution, version = package_info(TinyHubModel)  # this test module's "package"
    assert card.data.library_name == distribution
    assert {"synthesis-core", "TinyHubModel"} <= set(card.data.tags)
    text = card.text
    assert f"pip install {distribution}" in text and f"(version {version})" in text
    assert f'TinyHubModel.from_pretrained("{REPO}")' in text
    config_block = text.split("```json\n")[1].split("```")[0]
    assert json.loads(config_block) == model.config == {"dim": 4, "hidden": 6}

    # what was uploaded is what a download gives back: the same model
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name, data in upload["files"].items():
        (pushed / name).write_bytes(data)
    hub.cache_model_folder(pushed, REPO, cache_dir=tmp_path / "cache")
    assert_same_model(model, TinyHubModel.from_pretrained(REPO, cache_dir=tmp_path / "cache"))

    # a branch is created before committing to it; a pull request needs none
    uploads.clear()
    created.clear()
    model.push_to_hub(REPO, revision="dev")
    assert [kind for kind, *_ in created] == ["repo", "branch"] and created[1][2]["branch"] == "dev"
    assert uploads[0]["revision"] == "dev" and uploads[0]["commit_message"] == "Upload TinyHubModel"
    created.clear()
    model.push_to_hub(REPO, create_pr=True)
    assert [kind for kind, *_ in created] == ["repo"] and uploads[-1]["create_pr"] is True

    # save_pretrained(push_to_hub=True) keeps the folder and its card, and uploads it
    uploads.clear()
    folder = model.save_pretrained(tmp_path / "tiny-model", push_to_hub=True, repo_id=REPO)
    assert set(folder_files(folder)) == {"config.json", "model.safetensors", "README.md"}
    assert uploads[0]["files"] == folder_files(folder)
    model.save_pretrained(tmp_path / "named-after-folder", push_to_hub=True)
    assert uploads[-1]["repo_id"] == "named-after-folder"

    with pytest.raises(ValueError, match="repo_id: only used when uploading"):
        model.save_pretrained(tmp_path / "x", repo_id=REPO)
    with pytest.raises(ValueError, match="repo_id: expected a Hub repo id"):
        model.push_to_hub("not/a/repo")
    with pytest.raises(TypeError, match="private"):
        model.push_to_hub(REPO, private="yes")
