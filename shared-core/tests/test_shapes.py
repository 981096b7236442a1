"""The embedded shapes dataset and the caption scorer that needs no learned model."""

import math
import random

import pytest
import torch

from synthesis_core.shapes import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    CaptionScorer,
    ShapesVideoDataset,
    all_captions,
    caption_attributes,
)


def batch(dataset, n):
    items = [dataset[i] for i in range(n)]
    return torch.stack([v for v, _ in items]), [c for _, c in items]


def test_items_are_deterministic_in_range_and_shaped():
    a, b = ShapesVideoDataset(10, seed=3), ShapesVideoDataset(10, seed=3)
    video, caption = a[7]
    assert video.shape == (3, 8, 32, 32) and video.min() >= 0 and video.max() <= 1
    assert torch.equal(video, b[7][0]) and caption == b[7][1]
    assert not torch.equal(a[1][0], ShapesVideoDataset(10, seed=4)[1][0])


def test_any_size_and_frame_count_and_image_variant():
    video, _ = ShapesVideoDataset(2, image_size=48, num_frames=5)[0]
    assert video.shape == (3, 5, 48, 48)
    image, caption = ShapesVideoDataset(2, image_size=16, images=True)[1]
    assert image.shape == (3, 16, 16) and "moving" not in caption


def test_caption_grammar_covers_every_combination():
    captions = all_captions()
    assert len(captions) == len(COLORS) * len(SHAPES) * len(DIRECTIONS) == 48
    assert caption_attributes("a red circle moving left") == {"color": "red", "shape": "circle", "direction": "left"}
    assert caption_attributes("a blue square")["direction"] is None
    seen = {ShapesVideoDataset(400)[i][1] for i in range(400)}
    assert seen <= set(captions) and len(seen) > 40
    with pytest.raises(ValueError, match="caption: expected"):
        caption_attributes("a purple hexagon")


def test_motion_follows_the_caption():
    dataset = ShapesVideoDataset(40, num_frames=6)
    for i in range(40):
        video, caption = dataset[i]
        foreground = (video - 0.08).abs().sum(0) > 0.3  # (frames, h, w)
        ys, xs = torch.nonzero(foreground[0], as_tuple=True)
        ye, xe = torch.nonzero(foreground[-1], as_tuple=True)
        dy, dx = ye.float().mean() - ys.float().mean(), xe.float().mean() - xs.float().mean()
        expected = {"left": dx < -5, "right": dx > 5, "up": dy < -5, "down": dy > 5}[caption.split()[-1]]
        assert expected, (caption, dy, dx)


def test_scorer_agrees_with_the_dataset():
    videos, captions = batch(ShapesVideoDataset(300, seed=1), 300)
    result = CaptionScorer().score(videos, captions)
    assert result["all"] >= 0.99 and result["n"] == 300, result
    images, image_captions = batch(ShapesVideoDataset(120, images=True, image_size=24), 120)
    result = CaptionScorer().score(images, image_captions)
    assert result["all"] >= 0.99 and math.isnan(result["direction"]), result


def test_scorer_is_near_chance_on_noise_and_on_shuffled_captions():
    videos, captions = batch(ShapesVideoDataset(300, seed=2), 300)
    noise = CaptionScorer().score(torch.rand_like(videos), captions)
    assert noise["all"] < 0.08 and noise["color"] < 0.45, noise
    shuffled = captions[:]
    random.Random(0).shuffle(shuffled)
    result = CaptionScorer().score(videos, shuffled)
    assert result["all"] < 0.08, result
    assert 0.1 < result["color"] < 0.45 and 0.2 < result["shape"] < 0.5 and 0.1 < result["direction"] < 0.45, result


def test_describe_and_bad_input():
    videos, captions = batch(ShapesVideoDataset(4), 4)
    line = CaptionScorer.describe(CaptionScorer().score(videos, captions))
    assert "100% match the whole prompt" in line
    with pytest.raises(ValueError, match="one caption per video"):
        CaptionScorer().score(videos, captions[:2])
    with pytest.raises(ValueError, match="videos: expected"):
        CaptionScorer().score(videos[0], captions[:1])
    with pytest.raises(TypeError, match="videos: expected a torch.Tensor"):
        CaptionScorer().score(videos.numpy(), captions)
    with pytest.raises(ValueError, match="num_frames"):
        ShapesVideoDataset(4, num_frames=1)
