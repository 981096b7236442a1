"""One entry point for a fresh machine: sets up `.venv` (torch, the six members editable, test
tools) when it is missing or stale, then runs what was asked.

    python3 tools/dev.py demo [demo options]   # train a small model on the built-in data, write samples
    python3 tools/dev.py test [pytest options] # every test of every member, then the acceptance suite
    python3 tools/dev.py setup                 # only the environment

It needs nothing but Python 3.10+ with pip and venv. The environment is rebuilt only when a
pyproject.toml or the dev requirements change (a hash of them is kept in `.venv/.setup-stamp`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workspace import ROOT, install_editable, member_paths  # noqa: E402  (a sibling script, no package)

VENV = ROOT / ".venv"
ACCEPTANCE = ROOT.parent / "shared" / "acceptance"


def _python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    paths = member_paths()
    digest.update("\n".join(paths).encode())  # a member added or removed
    for path in [ROOT / "tools/requirements-dev.txt", *(ROOT / m / "pyproject.toml" for m in paths)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run(*args: str | Path, **kwargs) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, **kwargs)


def setup() -> Path:
    """Create or refresh `.venv`; return its python."""
    stamp = VENV / ".setup-stamp"
    fingerprint = _fingerprint()
    if _python().exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return _python()
    if not _python().exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    py = _python()
    _run(py, "-m", "pip", "install", "-q", "--upgrade", "pip")
    _run(py, "-m", "pip", "install", "-q", "-r", ROOT / "tools/requirements-dev.txt")
    print(f"+ {py} tools/workspace.py install-editable", flush=True)
    install_editable(str(py))
    stamp.write_text(fingerprint)
    return py


def test(extra: list[str]) -> int:
    py = setup()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    code = subprocess.run([str(py), "-m", "pytest", *extra], cwd=ROOT, env=env).returncode
    if code != 0:
        return code
    if ACCEPTANCE.is_dir() and not extra:
        # the seed READMEs' examples, when the shared acceptance suite sits beside the checkout
        print(f"\n== acceptance suite: {ACCEPTANCE}", flush=True)
        code = subprocess.run(
            [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "."], cwd=ACCEPTANCE, env=env
        ).returncode
    return code


def demo(extra: list[str]) -> int:
    py = setup()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([str(py), str(ROOT / "tools/demo.py"), *extra], cwd=ROOT, env=env).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"setup", "test", "demo"}:
        print(__doc__)
        return 2
    command, extra = argv[0], argv[1:]
    if command == "setup":
        setup()
        return 0
    return test(extra) if command == "test" else demo(extra)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
