from importlib.metadata import version

import video_diffusion_pytorch


def test_version_matches_distribution_metadata():
    assert video_diffusion_pytorch.__version__ == version("video-diffusion-pytorch")
