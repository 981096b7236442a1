from importlib.metadata import version

import imagen_pytorch


def test_version_matches_distribution_metadata():
    assert imagen_pytorch.__version__ == version("imagen-pytorch")
