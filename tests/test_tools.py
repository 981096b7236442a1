"""The workspace tools: the members list, affected members, version bumps, release tags, the core pin check, CI YAML,\nthe license and type marker every distribution ships."""

import datetime as dt
import re
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
PACKAGES = [m.distribution for m in workspace.members() if m.path != workspace.CORE_DIR]


def test_core_change_selects_every_member():
    assert affected.affected(["shared-core/src/synthesis_core/attention.py"]) == ["synthesis-core", *PACKAGES]


def test_package_change_selects_only_that_package():
    assert affected.affected(["packages/phenaki/src/phenaki_pytorch/cvivit.py"]) == ["phenaki-pytorch"]
    assert affected.affected(["packages/nuwa/README.md", "packages/imagen/tests/test_x.py"]) == [
        "imagen-pytorch",
        "nuwa-pytorch",
    ]


def test_docs_and_benchmarks_select_nothing_but_workspace_files_select_all():
    assert affected.affected(["README.md", "benchmarks/results.json"]) == []
    assert affected.affected(["tools/dev.py"]) == ["synthesis-core", *PACKAGES]


def test_dependents_closure_follows_dependencies_between_packages():
    members = workspace.members()
    # a hypothetical package that depends on imagen-pytorch is pulled in when imagen changes
    extra = workspace.Member("packages/fake", "fake-pytorch", "fake_pytorch", ROOT / "x", ("imagen-pytorch>=0.1",))
    assert affected.affected(["packages/imagen/x.py"], members + [extra]) == ["imagen-pytorch", "fake-pytorch"]


def test_affected_reads_paths_from_stdin():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools/affected.py")],
        input="packages/nuwa/a.py\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["nuwa-pytorch"]


def test_next_version():
    assert bump.next_version("0.1.0", "patch") == "0.1.1"
    assert bump.next_version("0.1.9", "minor") == "0.2.0"
    assert bump.next_version("1.4.2", "major") == "2.0.0"
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        bump.next_version("0.1", "patch")


def copy_workspace(tmp_path):
    for path in ["shared-core", "packages"]:
        shutil.copytree(
            ROOT / path, tmp_path / path, ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # the members list
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
    pyproject.write_text(pyproject.read_text().replace('"synthesis-core>=0.4,<0.5"', '"synthesis-core @ file:///x"'))
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
    run = subprocess.run(
        [linter, "--builtin-schema", "vendor.github-workflows", *workflows], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


# the members, listed once (the root pyproject's [tool.workspace] members)


def test_the_members_list_names_every_member_folder_and_the_core_first():
    on_disk = {f"packages/{p.name}" for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists()}
    paths = workspace.member_paths()
    assert paths[0] == workspace.CORE_DIR
    assert sorted(paths[1:]) == sorted(on_disk) and len(set(paths)) == len(paths)


def test_the_members_list_reads_without_tomllib(monkeypatch):
    # tools/dev.py imports workspace on a bare Python 3.10, which has neither tomllib nor tomli
    expected = workspace.member_paths()
    monkeypatch.setattr(workspace, "tomllib", None)
    assert workspace.member_paths() == expected
    with pytest.raises(RuntimeError, match="tomllib"):
        workspace.load_member("shared-core")


def test_the_members_list_refuses_a_malformed_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.workspace]\nmembers = ["packages/imagen", "shared-core"]\n')
    with pytest.raises(ValueError, match="first"):
        workspace.member_paths(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.other]\nx = 1\n")
    with pytest.raises(ValueError, match=r"\[tool.workspace\] members"):
        workspace.member_paths(tmp_path)


def test_workspace_cli_prints_the_members():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools/workspace.py"), "paths"], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == workspace.member_paths()


def test_release_tag_prints_the_member_folder_it_tests():
    core = workspace.member_named("synthesis-core")
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools/build.py"), "--tag", f"synthesis-core-v{core.version}", "--print-path"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["shared-core"]


def test_workflow_paths_are_members():
    # the workflows take the members from tools/affected.py; the few paths they name must still be members
    paths = set(workspace.member_paths())
    for workflow in (ROOT / ".github/workflows").glob("*.yml"):
        named = set(re.findall(r"\b(shared-core|packages/[a-z0-9-]+)\b", workflow.read_text()))
        assert named <= paths, f"{workflow.name} names {sorted(named - paths)}, which are not members"


# what every distribution ships


def test_every_member_carries_the_workspace_license():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License")
    for member in workspace.members():
        assert (ROOT / member.path / "LICENSE").read_text() == license_text, f"{member.path}/LICENSE differs"
        pyproject = (ROOT / member.path / "pyproject.toml").read_text()
        assert re.search(r'^license = "MIT"$', pyproject, re.M), f"{member.path} does not declare MIT"


def test_every_member_ships_py_typed():
    for member in workspace.members():
        assert (member.about_file.parent / "py.typed").is_file(), f"{member.import_name} has no py.typed"
