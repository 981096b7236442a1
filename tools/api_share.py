"""Measure how much of the published packages' public API exists in ours, and write `benchmarks/api_share.md`.

The published packages (imagen-pytorch 2.1.0, video-diffusion-pytorch 0.7.0, make-a-video-pytorch 0.4.0,
phenaki-pytorch 0.5.0, nuwa-pytorch 0.7.8) live in a second virtual environment, since they share their import
names with ours:

```bash
python3 -m venv /work/published-venv
/work/published-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 imagen-pytorch==2.1.0 \
    video-diffusion-pytorch==0.7.0 make-a-video-pytorch==0.4.0 phenaki-pytorch==0.5.0 nuwa-pytorch==0.7.8
.venv/bin/python tools/api_share.py --published-python /work/published-venv/bin/python
```

Each environment's interpreter runs the same introspection (`DUMP_SOURCE`, as a subprocess) and prints JSON:
for every public class of each package's top-level namespace, its constructor keywords and its public methods
and properties. Published imagen and phenaki read T5's config from the Hugging Face hub when imported; the
published side runs offline against a throw-away hub cache holding only that config.

What counts (the issue's measure):
- classes: a published class whose name our package exports at the top level.
- constructor keywords: a published keyword that our class's `__init__` names, or that its `**kwargs` reach: the
  class they are registered as forwarded to (`register_loadable(forwards_kwargs_to=...)`) or the base classes'
  `__init__` along the MRO (cooperative constructors, e.g. a trainer's shared keywords are its core base class's).
  Any other keyword our class only takes through `**kwargs` does not count: we cannot tell whether it means anything.
- methods: a published public method or property defined by the published package's classes (not the ones
  every `nn.Module` has) that our class has (our methods from any base class count, `nn.Module`'s included).
- method keywords (reported, not part of the share): the keywords of those methods that ours also names.
A class of ours that is missing counts all its keywords and methods as missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("api_share")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "benchmarks" / "api_share.md"
PACKAGES = ("imagen_pytorch", "video_diffusion_pytorch", "make_a_video_pytorch", "phenaki_pytorch", "nuwa_pytorch")
PUBLISHED_VERSIONS = {
    "imagen_pytorch": "imagen-pytorch 2.1.0",
    "video_diffusion_pytorch": "video-diffusion-pytorch 0.7.0",
    "make_a_video_pytorch": "make-a-video-pytorch 0.4.0",
    "phenaki_pytorch": "phenaki-pytorch 0.5.0",
    "nuwa_pytorch": "nuwa-pytorch 0.7.8",
}

# The introspection both interpreters run; it prints one JSON object on stdout:
# {package: {"error": str} | {"classes": {name: {"keywords": [...], "var_keyword": bool,
#   "own_methods": {method: [keywords]}, "all_attributes": [...], "all_method_keywords": {method: [keywords]}}}}}
DUMP_SOURCE = r'''
import importlib, inspect, json, logging, sys, warnings
logging.disable(logging.CRITICAL)
warnings.simplefilter("ignore")

try:  # ours: where a constructor passes its **kwargs on (register_loadable(forwards_kwargs_to=...))
    from synthesis_core.checkpoint import constructor_parameters
except ImportError:
    constructor_parameters = None

def keywords_of(function, bound=True):
    """Keyword names of a function; `bound`: its first parameter is the instance / class (whatever its name:
    a decorator's wrapper may call it `model`)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return [], False
    names, var_keyword = [], False
    for index, param in enumerate(signature.parameters.values()):
        if index == 0 and bound and param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            continue
        if param.kind is param.VAR_KEYWORD:
            var_keyword = True
        elif param.kind is not param.VAR_POSITIONAL:
            names.append(param.name)
    return names, var_keyword

def cooperative_keywords(cls):
    """Ours only: the keywords of the base classes' constructors that `cls`'s `**kwargs` reach along the MRO
    (cooperative constructors: each `__init__` with `**kwargs` passes them to the next one); `nn.Module` and
    `object` name none, so a model whose `**kwargs` go elsewhere gains nothing here."""
    found = []
    for klass in cls.__mro__[1:]:
        if "__init__" not in vars(klass):
            continue
        names, var_keyword = keywords_of(klass.__init__)
        found += [name for name in names if name not in found]
        if not var_keyword:
            break
    return found

def own_methods(cls, package):
    """Public methods/properties defined in the class bodies of the package's own classes in the MRO."""
    found = {}
    for klass in cls.__mro__:
        if not getattr(klass, "__module__", "").startswith(package):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in found:
                continue
            if isinstance(value, property):
                found[name] = []
            elif isinstance(value, staticmethod):
                found[name] = keywords_of(value.__func__, bound=False)[0]
            elif isinstance(value, classmethod):
                found[name] = keywords_of(value.__func__)[0]
            elif inspect.isfunction(value):
                found[name] = keywords_of(value)[0]
    return found

def all_method_keywords(cls):
    """The keywords of every public method the class has, wherever in its MRO it is defined."""
    found = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name, None)
        if isinstance(raw, staticmethod):
            found[name] = keywords_of(raw.__func__, bound=False)[0]
        elif isinstance(raw, classmethod):
            found[name] = keywords_of(raw.__func__)[0]
        elif inspect.isfunction(raw):
            found[name] = keywords_of(raw)[0]
    return found

result = {}
for package in sys.argv[1:]:
    try:
        module = importlib.import_module(package)
    except Exception as error:  # the report says which package could not be imported and why
        result[package] = {"error": f"{type(error).__name__}: {error}"}
        continue
    classes = {}
    for name in sorted(dir(module)):
        value = getattr(module, name)
        if name.startswith("_") or not inspect.isclass(value):
            continue
        if not value.__module__.startswith(package):
            continue
        keywords, var_keyword = keywords_of(value.__init__)
        if var_keyword and constructor_parameters is not None:
            try:
                keywords += [k for k in constructor_parameters(value) if k not in keywords]
            except Exception:  # a class the registry cannot read: its own signature is all we know
                pass
            keywords += [k for k in cooperative_keywords(value) if k not in keywords]
        classes[name] = {
            "keywords": keywords,
            "var_keyword": var_keyword,
            "own_methods": own_methods(value, package),
            "all_attributes": sorted(a for a in dir(value) if not a.startswith("_")),
            "all_method_keywords": all_method_keywords(value),
        }
    result[package] = {"classes": classes}
print(json.dumps(result))
'''

# T5 v1.1 base, the encoder published imagen / phenaki read the width of at import
T5_CONFIG = {
    "architectures": ["T5ForConditionalGeneration"],
    "d_ff": 2048,
    "d_kv": 64,
    "d_model": 768,
    "decoder_start_token_id": 0,
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_decoder_layers": 12,
    "num_heads": 12,
    "num_layers": 12,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
}
T5_NAMES = (
    "google/t5-v1_1-base",
    "google/t5-v1_1-small",
    "google/t5-v1_1-large",
    "google/t5-v1_1-xl",
    "t5-small",
    "t5-base",
    "t5-large",
)


def make_offline_hub_cache(hf_home: Path) -> None:
    """A Hugging Face cache laid out as the hub lays it out, holding only T5 configs (no weights, no network)."""
    snapshot = "0" * 40
    for name in T5_NAMES:
        repo = hf_home / "hub" / ("models--" + name.replace("/", "--"))
        (repo / "snapshots" / snapshot).mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(snapshot)
        (repo / "snapshots" / snapshot / "config.json").write_text(json.dumps(T5_CONFIG))


def dump_api(python: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Run the introspection in `python`'s environment; returns its JSON."""
    completed = subprocess.run(
        [python, "-c", DUMP_SOURCE, *PACKAGES], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{python}: the introspection failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@dataclass
class PackageShare:
    package: str
    classes: tuple[int, int] = (0, 0)
    keywords: tuple[int, int] = (0, 0)
    methods: tuple[int, int] = (0, 0)
    method_keywords: tuple[int, int] = (0, 0)
    missing_classes: list[str] = field(default_factory=list)
    missing_keywords: list[str] = field(default_factory=list)
    missing_methods: list[str] = field(default_factory=list)
    missing_method_keywords: list[str] = field(default_factory=list)
    error: str | None = None


def compare_package(package: str, published: dict, ours: dict) -> PackageShare:
    share = PackageShare(package)
    if "error" in published:
        share.error = f"published package not importable: {published['error']}"
        return share
    our_classes = ours.get("classes", {})
    if "error" in ours:
        share.error = f"our package not importable: {ours['error']}"
    counts = {"classes": [0, 0], "keywords": [0, 0], "methods": [0, 0], "method_keywords": [0, 0]}
    for name, spec in sorted(published["classes"].items()):
        mine = our_classes.get(name)
        counts["classes"][1] += 1
        counts["classes"][0] += mine is not None
        if mine is None:
            share.missing_classes.append(name)
        for keyword in spec["keywords"]:
            present = mine is not None and keyword in mine["keywords"]
            counts["keywords"][0] += present
            counts["keywords"][1] += 1
            if not present and mine is not None:
                share.missing_keywords.append(f"{name}({keyword}=)")
        for method, method_keywords in sorted(spec["own_methods"].items()):
            present = mine is not None and method in mine["all_attributes"]
            counts["methods"][0] += present
            counts["methods"][1] += 1
            if not present and mine is not None:
                share.missing_methods.append(f"{name}.{method}")
            our_method_keywords = (mine or {}).get("all_method_keywords", {}).get(method)
            for keyword in method_keywords:
                found = our_method_keywords is not None and keyword in our_method_keywords
                counts["method_keywords"][0] += found
                counts["method_keywords"][1] += 1
                if not found and present:
                    share.missing_method_keywords.append(f"{name}.{method}({keyword}=)")
    for key, (have, total) in counts.items():
        setattr(share, key, (have, total))
    return share


def _percent(have: int, total: int) -> str:
    return f"{100 * have / total:.1f}%" if total else "n/a"


def render_report(shares: list[PackageShare]) -> str:
    def totals(attribute: str) -> tuple[int, int]:
        return (sum(getattr(s, attribute)[0] for s in shares), sum(getattr(s, attribute)[1] for s in shares))

    lines = [
        "# Published API share",
        "",
        "How much of the published packages' public API exists in ours, measured by `tools/api_share.py` "
        "(`.venv/bin/python tools/api_share.py --published-python /work/published-venv/bin/python`). "
        "Classes: the published top-level classes our package exports by the same name. Keywords: published "
        "constructor keywords our constructor names. Methods: published public methods and properties (those the "
        "package's classes define, not `nn.Module`'s) that our class has. Share = keywords + methods together, the "
        "issue's measure. Method keywords are reported for information. Classes are read, not built: an attribute "
        "that our constructor sets on the instance (not a method or property of the class) counts as missing.",
        "",
        "| package | classes | constructor keywords | methods | share (keywords + methods) | method keywords |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for share in shares:
        if share.error and not share.classes[1]:
            lines.append(f"| {PUBLISHED_VERSIONS[share.package]} | {share.error} | | | | |")
            continue
        combined = (share.keywords[0] + share.methods[0], share.keywords[1] + share.methods[1])
        lines.append(
            f"| {PUBLISHED_VERSIONS[share.package]} | {share.classes[0]}/{share.classes[1]} | "
            f"{share.keywords[0]}/{share.keywords[1]} ({_percent(*share.keywords)}) | "
            f"{share.methods[0]}/{share.methods[1]} ({_percent(*share.methods)}) | {_percent(*combined)} | "
            f"{share.method_keywords[0]}/{share.method_keywords[1]} ({_percent(*share.method_keywords)}) |"
        )
    classes, keywords, methods, method_keywords = (
        totals(a) for a in ("classes", "keywords", "methods", "method_keywords")
    )
    combined = (keywords[0] + methods[0], keywords[1] + methods[1])
    lines.append(
        f"| **all** | {classes[0]}/{classes[1]} | {keywords[0]}/{keywords[1]} ({_percent(*keywords)}) | "
        f"{methods[0]}/{methods[1]} ({_percent(*methods)}) | **{_percent(*combined)}** | "
        f"{method_keywords[0]}/{method_keywords[1]} ({_percent(*method_keywords)}) |"
    )
    lines += ["", "## What is missing", ""]
    for share in shares:
        lines.append(f"### {PUBLISHED_VERSIONS[share.package]}")
        lines.append("")
        if share.error:
            lines.append(f"- {share.error}")
        entries = [
            ("classes", share.missing_classes),
            ("constructor keywords", share.missing_keywords),
            ("methods", share.missing_methods),
            ("method keywords", share.missing_method_keywords),
        ]
        if not any(items for _, items in entries):
            lines.append("- nothing")
        for label, items in entries:
            if items:
                lines.append(f"- {label} ({len(items)}): " + ", ".join(f"`{item}`" for item in items))
        lines.append("")
    return "\n".join(lines)


def measure(published_python: str, our_python: str) -> list[PackageShare]:
    with tempfile.TemporaryDirectory(prefix="api-share-hf-") as hf_home:
        make_offline_hub_cache(Path(hf_home))
        published_env = {
            **os.environ,
            "HF_HOME": hf_home,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        published_env.pop("PYTHONPATH", None)
        # run outside the repository so the published environment cannot pick up our sources
        published = dump_api(published_python, env=published_env, cwd=Path(hf_home))
    ours = dump_api(our_python, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    return [
        compare_package(p, published.get(p, {"error": "not dumped"}), ours.get(p, {"error": "not dumped"}))
        for p in PACKAGES
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--published-python",
        default="/work/published-venv/bin/python",
        help="the interpreter of the environment holding the published packages",
    )
    parser.add_argument(
        "--our-python",
        default=sys.executable,
        help="the interpreter of the environment holding ours (default: this one)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the Markdown report")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if not Path(args.published_python).exists():
        parser.error(
            f"--published-python: {args.published_python} does not exist; create the environment as the "
            "module docstring says"
        )
    shares = measure(args.published_python, args.our_python)
    report = render_report(shares)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report + "\n")
    if args.json:
        args.json.write_text(json.dumps([share.__dict__ for share in shares], indent=2))
    for line in report.splitlines():
        if line.startswith("| ") and "---" not in line:
            logger.info(line)
    logger.info("written %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
