"""The workspace tools: affected members, version bumps, release tags, the core pin check, CI YAML."""
import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path

import affected
import build
import bump
import check_pins
import pytest
import workspace

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["imagen-pytorch", "make-a-video-pytorch", "nuwa-pytorch", "phenaki-pytorch", "video-diffusion-pytorch"]


def test_core_change_selects_every_member():
    assert affected.affected(["shared-core/src/synthesis_core/attention.py"]) == ["synthesis-core", *PACKAGES]


def test_package_change_selects_only_that_package():
    assert affected.affected(["packages/phenaki/src/phenaki_pytorch/cvivit.py"]) == ["phenaki-pytorch"]
    assert affected.affected(["packages/nuwa/README.md", "packages/imagen/tests/test_x.py"]) == [
        "imagen-pytorch", "nuwa-pytorch"]


def test_docs_and_benchmarks_select_nothing_but_workspace_files_select_all():
    assert affected.affected(["README.md", "benchmarks/results.json"]) == []
    assert affected.affected(["tools/dev.py"]) == ["synthesis-core", *PACKAGES]


def test_dependents_closure_follows_dependencies_between_packages():
    members = workspace.members()
    # a hypothetical package that depends on imagen-pytorch is pulled in when imagen changes
    extra = workspace.Member("packages/fake", "fake-pytorch", "fake_pytorch", ROOT / "x", ("imagen-pytorch>=0.1",))
    assert affected.affected(["packages/imagen/x.py"], members + [extra]) == ["imagen-pytorch", "fake-pytorch"]


def test_affected_reads_paths_from_stdin():
    out = subprocess.run([sys.executable, str(ROOT / "tools/affected.py")], input="packages/nuwa/a.py\n",
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["nuwa-pytorch"]


def test_next_version():
    assert bump.next_version("0.1.0", "patch") == "0.1.1"
    assert bump.next_version("0.1.9", "minor") == "0.2.0"
    assert bump.next_version("1.4.2", "major") == "2.0.0"
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        bump.next_version("0.1", "patch")


def copy_workspace(tmp_path):
    for path in ["shared-core", "packages"]:
        shutil.copytree(ROOT / path, tmp_path / path, ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__"))
    return tmp_path


def test_bump_rewrites_version_and_opens_dated_changelog_section(tmp_path):
    real_changelog = (ROOT / "packages/nuwa/CHANGELOG.md").read_text()
    root = copy_workspace(tmp_path)
    member = workspace.load_member("packages/nuwa", root)
    assert member.changelog == root / "packages/nuwa/CHANGELOG.md"
    before = member.version
    new = bump.set_version(member, "minor", use_hatch=False)
    bump.open_changelog_section(member.changelog, new, "Faster 3DNA", dt.date(2026, 11, 22))
    assert member.version == new == bump.next_version(before, "minor")
    text = member.changelog.read_text()
    assert text.index(f"## {new} - 2026-11-22\n- Faster 3DNA") < text.index(f"## {before}")
    assert (ROOT / "packages/nuwa/CHANGELOG.md").read_text() == real_changelog, "the real checkout was written"


def test_bump_through_hatch(tmp_path):
    hatch = shutil.which("hatch") or str(Path(sys.executable).with_name("hatch"))
    if not Path(hatch).exists():
        pytest.skip("hatch is not installed")
    root = copy_workspace(tmp_path)
    member = workspace.load_member("shared-core", root)
    before = member.version
    subprocess.run([hatch, "version", "patch"], cwd=root / "shared-core", check=True, capture_output=True)
    assert member.version == bump.next_version(before, "patch")


def test_pin_check_accepts_the_workspace_and_rejects_bad_pins(tmp_path):
    assert check_pins.problems(workspace.members()) == []
    root = copy_workspace(tmp_path)
    about = root / "shared-core/src/synthesis_core/__about__.py"
    major, minor, _ = workspace.member_named("synthesis-core").version.split(".")
    outside = f"{major}.{int(minor) + 1}.0"  # the next minor: outside every package's compatible range
    about.write_text(f'__version__ = "{outside}"\n')
    found = check_pins.problems(workspace.members(root))
    assert len(found) == 5 and all(f"does not admit synthesis-core {outside}" in line for line in found)
    pyproject = root / "packages/nuwa/pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"synthesis-core>=0.2,<0.3"', '"synthesis-core @ file:///x"'))
    assert any("by URL/path" in line for line in check_pins.problems(workspace.members(root)))


def test_release_tag_names_member_and_version():
    core = workspace.member_named("synthesis-core")
    assert build.member_for_tag(f"synthesis-core-v{core.version}").path == "shared-core"
    with pytest.raises(ValueError, match="names version"):
        build.member_for_tag("imagen-pytorch-v9.9.9")
    with pytest.raises(ValueError, match="not <distribution>-v<version>"):
        build.member_for_tag("imagen-0.1.0")


def test_workflows_pass_the_schema_linter():
    linter = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
    workflows = sorted(str(p) for p in (ROOT / ".github/workflows").glob("*.yml"))
    assert workflows
    run = subprocess.run([linter, "--builtin-schema", "vendor.github-workflows", *workflows],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
