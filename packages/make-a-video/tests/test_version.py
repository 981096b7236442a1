from importlib.metadata import version

import make_a_video_pytorch


def test_version_matches_distribution_metadata():
    assert make_a_video_pytorch.__version__ == version("make-a-video-pytorch")
