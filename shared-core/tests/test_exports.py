import subprocess
import sys

import pytest

import synthesis_core


def test_every_exported_name_resolves_to_its_module_object():
    for name in synthesis_core.__all__:
        value = getattr(synthesis_core, name)
        if name != "__version__" and hasattr(value, "__module__") and callable(value):
            assert value.__module__.startswith("synthesis_core.")


def test_unknown_name_is_a_clear_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        synthesis_core.NotAThing  # noqa: B018


def test_import_is_lazy():
    code = "import sys, synthesis_core; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
