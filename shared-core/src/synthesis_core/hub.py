"""Models shared on the Hugging Face Hub: `from_pretrained("org/name")` and `push_to_hub("org/name")`.

A model folder written by `PretrainedMixin.save_pretrained` (`config.json` + `model.safetensors`) is exactly what a
Hub model repo of this project holds, plus a generated model card (`README.md`). This module only moves such
folders between the Hub and the disk, with `huggingface_hub` (which comes with `transformers`):

- `resolve_model_folder(name_or_path, ...)`: a local folder as is; otherwise a Hub repo id, fetched with
  `snapshot_download` into the Hub cache (only the two files a model folder needs), or read from that cache alone
  when `local_files_only=True` or `HF_HUB_OFFLINE` is set. The folder it returns is then loaded by the one safe path
  of `synthesis_core.checkpoint` (registered classes only, config validated, safetensors only): a downloaded folder
  is data, treated exactly like a local one.
- `push_model_to_hub(model, repo_id, ...)`: saves the model to a temporary folder, writes its model card and
  uploads the folder (`HfApi.create_repo(exist_ok=True)` + `HfApi.upload_folder`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthesis_core.__about__ import __version__
from synthesis_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, PathLike, package_info

logger = logging.getLogger(__name__)

MODEL_CARD_NAME = "README.md"
HUB_MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME)
"""The files of a Hub repo that loading downloads: nothing else of a repo (pickles, scripts) is ever fetched."""

_TRUE_STRINGS = ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """Whether the Hub must not be contacted: `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set now, or was set
    when `huggingface_hub` was imported (it reads the variable once, then)."""
    if any(
        os.environ.get(var, "").strip().lower() in _TRUE_STRINGS for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    hub_constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(hub_constants, "HF_HUB_OFFLINE", False))


def is_repo_id(name: str) -> bool:
    """Whether `name` can be a Hub repo id (`name` or `org/name`); a path such as `./x`, `/data/x` or `a/b/c`
    cannot."""
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(name, str) or name.startswith(("~", ".")):
        return False
    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def _check_optional_str(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name}: expected a string or None, got {type(value).__name__}")


def _check_hub_arguments(revision: Any, cache_dir: Any, local_files_only: Any, token: Any) -> None:
    _check_optional_str(revision, "revision")
    if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
        raise TypeError(f"cache_dir: expected a folder path or None, got {type(cache_dir).__name__}")
    if not isinstance(local_files_only, bool):
        raise TypeError(f"local_files_only: expected a bool, got {type(local_files_only).__name__}")
    if token is not None and not isinstance(token, str | bool):
        raise TypeError(f"token: expected a string, a bool or None, got {type(token).__name__}")


def resolve_model_folder(
    name_or_path: PathLike,
    *,
    revision: str | None = None,
    cache_dir: PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The local folder that holds the model `name_or_path` names.

    An existing folder is returned as is (it has no revisions: `revision` must then be None). Otherwise a string
    that is a Hub repo id (`org/name`) is fetched with `huggingface_hub.snapshot_download` (only `config.json` and
    `model.safetensors`) into the Hub cache (`cache_dir`, default the `HF_HUB_CACHE` one) at `revision` (a branch,
    tag or commit; default `main`), with `token` for private repos; from that cache alone, without any network
    access, when `local_files_only=True` or `HF_HUB_OFFLINE` is set. A folder of that name is always preferred to
    the repo. Raises `FileNotFoundError` when neither is found, saying where it looked.
    """
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(
            f"name_or_path: expected a folder path or a Hub repo id (a string), got {type(name_or_path).__name__}"
        )
    _check_hub_arguments(revision, cache_dir, local_files_only, token)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(
                f"revision: {str(name_or_path)!r} is a local folder, which has no revisions; pass "
                "revision only with a Hub repo id (or remove the folder of that name)"
            )
        return path
    name = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not is_repo_id(name):
        raise FileNotFoundError(
            f"no folder {path} (a model folder written by save_pretrained: {CONFIG_NAME} + "
            f"{WEIGHTS_NAME}), and {name!r} is not a Hugging Face Hub repo id ('org/name') "
            "either"
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = local_files_only or hub_offline()
    try:
        downloaded = snapshot_download(
            name,
            revision=revision,
            cache_dir=None if cache_dir is None else Path(cache_dir),
            local_files_only=offline,
            token=token,
            allow_patterns=list(HUB_MODEL_FILES),
            library_name="synthesis-core",
            library_version=__version__,
        )
    except LocalEntryNotFoundError as err:
        why = (
            "local_files_only=True"
            if local_files_only
            else "HF_HUB_OFFLINE is set"
            if offline
            else "the Hub could not be reached"
        )
        raise FileNotFoundError(
            f"no folder {path} (with {CONFIG_NAME} + {WEIGHTS_NAME}), and the Hub repo {name!r}{_at(revision)} "
            f"is not in the Hub cache "
            f"{_cache_folder(cache_dir)} ({why}): download it once with network access "
            f"(`hf download {name}` or from_pretrained({name!r}) online), or pass a local folder "
            f"({type(err).__name__}: {_first_line(err)})"
        ) from err
    except GatedRepoError as err:
        raise PermissionError(
            f"the Hub repo {name!r} is gated: accept its conditions on the Hub and pass "
            f"token= (or log in with `hf auth login`) ({_first_line(err)})"
        ) from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(
            f"no folder {path}, and no Hub repo {name!r} (or it is private: pass token=) ({_first_line(err)})"
        ) from err
    folder = Path(downloaded)
    logger.info("model %r%s read from the Hub cache folder %s", name, _at(revision), folder)
    return folder


def _at(revision: str | None) -> str:
    return f" at revision {revision!r}" if revision is not None else ""


def _first_line(err: Exception) -> str:
    text = str(err)
    return text.splitlines()[0] if text else ""


def _cache_folder(cache_dir: PathLike | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cache_model_folder(
    folder: PathLike,
    repo_id: str,
    *,
    cache_dir: PathLike | None = None,
    revision: str = "main",
    commit_hash: str | None = None,
) -> Path:
    """Places a model folder into the Hub cache as the repo `repo_id` at `revision` (a branch or tag name), laid
    out as `huggingface_hub` lays out a download: `models--org--name/blobs/<sha256>`, `snapshots/<commit>/<file>`
    (links to the blobs; copies where links cannot be made) and `refs/<revision>` holding the commit.

    Afterwards `Model.from_pretrained(repo_id, revision=revision)` loads it offline: for machines without
    network that receive models as folders. `commit_hash` (40 hex digits) defaults to a hash of the files.
    Only the files a model repo holds (`config.json`, `model.safetensors`, `README.md`) are copied. Returns the
    snapshot folder.
    """
    import hashlib

    from huggingface_hub.file_download import repo_folder_name

    from synthesis_core.checkpoint import atomic_write_bytes

    check_repo_id(repo_id)
    if not isinstance(revision, str) or not revision or revision.startswith("/") or ".." in revision.split("/"):
        raise ValueError(f"revision: expected a branch or tag name such as 'main' or 'v1', got {revision!r}")
    folder = Path(folder)
    files = {
        name: (folder / name).read_bytes() for name in (*HUB_MODEL_FILES, MODEL_CARD_NAME) if (folder / name).is_file()
    }
    missing = [name for name in HUB_MODEL_FILES if name not in files]
    if missing:
        raise FileNotFoundError(f"folder: {folder} lacks {missing} (expected a folder written by save_pretrained)")
    if commit_hash is None:
        digest = hashlib.sha1(usedforsecurity=False)
        for name, data in sorted(files.items()):
            digest.update(name.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
        commit_hash = digest.hexdigest()
    elif (
        not isinstance(commit_hash, str)
        or len(commit_hash) != 40
        or any(c not in "0123456789abcdef" for c in commit_hash)
    ):
        raise ValueError(f"commit_hash: expected 40 lowercase hex digits, got {commit_hash!r}")
    storage = Path(_cache_folder(cache_dir)) / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = storage / "snapshots" / commit_hash
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob_name = hashlib.sha256(data).hexdigest()
        blob = storage / "blobs" / blob_name
        if not blob.is_file():
            atomic_write_bytes(blob, data)
        target = snapshot / name
        target.unlink(missing_ok=True)
        try:
            target.symlink_to(Path("..", "..", "blobs", blob_name))
        except OSError:  # no symbolic links here (e.g. Windows without developer mode): the hub copies too
            atomic_write_bytes(target, data)
    atomic_write_bytes(storage / "refs" / revision, commit_hash.encode("ascii"))
    logger.info("cached %s as the Hub repo %s at revision %r (commit %s)", folder, repo_id, revision, commit_hash)
    return snapshot


# ----------------------------------------------------------------------------------------------------------------
# publishing
# ----------------------------------------------------------------------------------------------------------------


def import_statement(cls: type) -> str:
    """`from pkg import Class`, from the top-level package when it exports the class, else from its module."""
    top = cls.__module__.split(".")[0]
    module = top if getattr(sys.modules.get(top), cls.__name__, None) is cls else cls.__module__
    return f"from {module} import {cls.__name__}"


def model_card(model: Any, repo_id: str) -> str:
    """The Hub model card (`README.md`) of a `PretrainedMixin` model published as `repo_id`: YAML front matter
    (`library_name`, tags), the package and version that wrote it, how to install and load it, and its config."""
    from huggingface_hub import ModelCardData

    cls = type(model)
    distribution, version = package_info(cls)
    document = model.config_document()
    metadata = ModelCardData(
        library_name=distribution, tags=list(dict.fromkeys(["synthesis-core", distribution, cls.__name__]))
    )
    config_json = json.dumps(document["config"], indent=2)
    return (
        f"---\n{metadata.to_yaml()}\n---\n\n"
        f"# {repo_id}\n\n"
        f"A `{cls.__name__}` model of `{distribution}` (version {version}), saved with `save_pretrained`: its\n"
        f"constructor arguments are in `{CONFIG_NAME}` and its weights in `{WEIGHTS_NAME}` (safetensors: loading\n"
        "it runs no code).\n\n"
        "## How to load\n\n"
        f"```bash\npip install {distribution}\n```\n\n"
        f"```python\n{import_statement(cls)}\n\n"
        f'model = {cls.__name__}.from_pretrained("{repo_id}")\n```\n\n'
        "Offline, it loads from the local Hugging Face cache (`HF_HUB_OFFLINE=1` or `local_files_only=True`).\n\n"
        "## Config\n\n"
        f"Stored class `{document['class']}`:\n\n"
        f"```json\n{config_json}\n```\n"
    )


def upload_model_folder(
    folder: PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Uploads a model folder (`config.json`, `model.safetensors`, `README.md`) to the Hub model repo `repo_id`,
    creating the repo when needed (`private` applies then) and the branch `revision` when given. Returns the
    `huggingface_hub.CommitInfo` of the commit (or pull request, `create_pr=True`)."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    _check_optional_str(revision, "revision")
    _check_optional_str(commit_message, "commit_message")
    if private is not None and not isinstance(private, bool):
        raise TypeError(f"private: expected a bool or None, got {type(private).__name__}")
    if not isinstance(create_pr, bool):
        raise TypeError(f"create_pr: expected a bool, got {type(create_pr).__name__}")
    if token is not None and not isinstance(token, str | bool):
        raise TypeError(f"token: expected a string, a bool or None, got {type(token).__name__}")
    folder = Path(folder)
    missing = [name for name in HUB_MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"folder: {folder} lacks {missing} (expected a folder written by save_pretrained)")
    api = HfApi(token=token)
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        token=token,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message or f"Upload {folder.name or 'model'}",
        allow_patterns=[*HUB_MODEL_FILES, MODEL_CARD_NAME],
    )
    logger.info("uploaded %s to the Hub repo %s%s", folder, repo_id, _at(revision))
    return info


def check_repo_id(repo_id: Any) -> str:
    """`repo_id` when it is a valid Hub repo id (`name` or `org/name`); a ValueError saying so otherwise."""
    if not isinstance(repo_id, str):
        raise TypeError(f"repo_id: expected a Hub repo id such as 'org/name', got {type(repo_id).__name__}")
    if not is_repo_id(repo_id):
        raise ValueError(f"repo_id: expected a Hub repo id such as 'org/name', got {repo_id!r}")
    return repo_id


def write_model_card(model: Any, folder: PathLike, repo_id: str) -> Path:
    """Writes `model_card(model, repo_id)` to `folder/README.md` (atomically)."""
    from synthesis_core.checkpoint import atomic_write_bytes

    path = Path(folder) / MODEL_CARD_NAME
    atomic_write_bytes(path, model_card(model, repo_id).encode("utf-8"))
    return path


def push_model_to_hub(
    model: Any,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    state_dict: Mapping[str, Any] | None = None,
) -> Any:
    """Publishes a `PretrainedMixin` model as the Hub model repo `repo_id`: `save_pretrained` into a temporary
    folder, a generated model card, then `upload_folder` (see `upload_model_folder`). Returns the commit info."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="synthesis-push-") as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        write_model_card(model, tmp, repo_id)
        return upload_model_folder(
            tmp,
            repo_id,
            token=token,
            private=private,
            revision=revision,
            commit_message=commit_message or f"Upload {type(model).__name__}",
            create_pr=create_pr,
        )


__all__ = [
    "MODEL_CARD_NAME",
    "HUB_MODEL_FILES",
    "hub_offline",
    "is_repo_id",
    "check_repo_id",
    "resolve_model_folder",
    "cache_model_folder",
    "import_statement",
    "model_card",
    "write_model_card",
    "upload_model_folder",
    "push_model_to_hub",
]
