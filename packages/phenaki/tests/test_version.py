from importlib.metadata import version

import phenaki_pytorch


def test_version_matches_distribution_metadata():
    assert phenaki_pytorch.__version__ == version("phenaki-pytorch")
