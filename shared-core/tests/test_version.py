from importlib.metadata import version

import synthesis_core


def test_version_matches_distribution_metadata():
    assert synthesis_core.__version__ == version("synthesis-core")
