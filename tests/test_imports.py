"""Every member imports, and its version is the one its distribution metadata carries."""

import importlib
from importlib.metadata import requires, version

import pytest
from packaging.requirements import Requirement
from workspace import CORE_DIR, members

MEMBERS = members()


@pytest.mark.parametrize("member", MEMBERS, ids=lambda m: m.distribution)
def test_member_imports_with_its_metadata_version(member):
    module = importlib.import_module(member.import_name)
    assert module.__version__ == version(member.distribution) == member.version


@pytest.mark.parametrize("member", [m for m in MEMBERS if m.path != CORE_DIR], ids=lambda m: m.distribution)
def test_package_requires_a_core_range_admitting_the_core(member):
    core = next(m for m in MEMBERS if m.path == CORE_DIR)
    pins = [Requirement(r) for r in requires(member.distribution) if Requirement(r).name == core.distribution]
    assert len(pins) == 1 and pins[0].url is None
    assert pins[0].specifier.contains(core.version)
    major, minor, _ = core.version.split(".")
    next_minor = f"{major}.{int(minor) + 1}.0"
    assert not pins[0].specifier.contains(next_minor), "the range must stop before the next minor core release"
