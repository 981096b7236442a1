from importlib.metadata import version

import nuwa_pytorch


def test_version_matches_distribution_metadata():
    assert nuwa_pytorch.__version__ == version("nuwa-pytorch")
