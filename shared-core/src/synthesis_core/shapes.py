"""A captioned video dataset that ships with the code, and a scorer that checks samples against captions.

`ShapesVideoDataset` draws a coloured shape (circle, square, triangle in red, green, blue or yellow)
moving left, right, up or down over a plain dark background, captioned "a red circle moving left".
Every sample is a pure function of (seed, index): no download, no files, any size and frame count.

`CaptionScorer` needs no learned model: it measures the colour, shape and direction of motion from the
pixels of a video and reports how often they match the caption, so a demo can say how well a model
follows its prompts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from synthesis_core.checks import check_tensor

__all__ = [
    "COLORS",
    "SHAPES",
    "DIRECTIONS",
    "make_caption",
    "caption_attributes",
    "all_captions",
    "shape_mask",
    "ShapesVideoDataset",
    "CaptionScorer",
]

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
BACKGROUND = (0.08, 0.08, 0.08)

CAPTION_PATTERN = re.compile(rf"^a ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})(?: moving ({'|'.join(DIRECTIONS)}))?$")


def make_caption(color: str, shape: str, direction: str | None = None) -> str:
    return f"a {color} {shape}" + (f" moving {direction}" if direction else "")


def caption_attributes(caption: str) -> dict[str, str | None]:
    """`"a red circle moving left"` -> `{"color": "red", "shape": "circle", "direction": "left"}`."""
    match = CAPTION_PATTERN.match(caption.strip().lower())
    if match is None:
        raise ValueError(
            f"caption: expected 'a <color> <shape>[ moving <direction>]' with color in {list(COLORS)}, "
            f"shape in {list(SHAPES)}, direction in {list(DIRECTIONS)}; got {caption!r}"
        )
    color, shape, direction = match.groups()
    return {"color": color, "shape": shape, "direction": direction}


def all_captions(images: bool = False) -> list[str]:
    """Every caption the dataset can produce (48 for videos, 12 for images), in a fixed order."""
    directions: Sequence[str | None] = (None,) if images else DIRECTIONS
    return [make_caption(c, s, d) for c in COLORS for s in SHAPES for d in directions]


def shape_mask(shape: str, center_y: float, center_x: float, radius: float, size: int) -> Tensor:
    """A (size, size) bool mask of one shape; the triangle points up and fills half its bounding box."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    dy, dx = y - center_y, x - center_x
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (dx.abs() <= radius) & (dy.abs() <= radius)
    if shape == "triangle":
        # apex at the top of the bounding box, base at the bottom: half-width grows linearly downwards
        depth = (dy + radius) / (2 * radius)
        return (depth >= 0) & (depth <= 1) & (dx.abs() <= depth * radius)
    raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")


class ShapesVideoDataset(Dataset):
    """Procedural captioned videos of one moving shape; deterministic from `(seed, index)`.

    Items are `(video, caption)` with `video` of shape `(3, num_frames, image_size, image_size)` in [0, 1],
    or `(image, caption)` with `image` of shape `(3, image_size, image_size)` when `images=True` (the
    caption then has no motion). With `text_embeddings` (a mapping or callable from caption to
    `(embeds, mask)`, e.g. pre-encoded T5 outputs), items are `(video, caption, embeds, mask)`.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        image_size: int = 32,
        num_frames: int = 8,
        seed: int = 0,
        images: bool = False,
        text_embeddings: Mapping[str, tuple[Tensor, Tensor]] | Callable[[str], tuple[Tensor, Tensor]] | None = None,
        radius_fraction: float = 0.2,
        travel_fraction: float = 0.4,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples: expected a positive count, got {num_samples}")
        if image_size < 8:
            raise ValueError(f"image_size: expected at least 8 pixels, got {image_size}")
        if num_frames < 1 or (not images and num_frames < 2):
            raise ValueError(f"num_frames: expected at least 2 frames for videos (1 for images), got {num_frames}")
        self.num_samples = num_samples
        self.image_size = image_size
        self.num_frames = 1 if images else num_frames
        self.seed = seed
        self.images = images
        self.text_embeddings = text_embeddings
        self.radius = radius_fraction * image_size
        self.travel = 0.0 if images else travel_fraction * image_size

    def __len__(self) -> int:
        return self.num_samples

    def attributes(self, index: int) -> dict:
        """The sampled attributes of item `index`: colour, shape, direction and the start position."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pick = lambda options: options[int(torch.randint(len(options), (1,), generator=generator))]
        color, shape = pick(list(COLORS)), pick(SHAPES)
        direction = None if self.images else pick(DIRECTIONS)
        margin = self.radius + 1
        # the shape must stay inside the frame for the whole clip: leave room for the travel along its axis
        low, high = margin, self.image_size - margin
        uniform = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=generator))
        start_y, start_x = uniform(low, high), uniform(low, high)
        if direction == "left":
            start_x = uniform(low + self.travel, high)
        elif direction == "right":
            start_x = uniform(low, high - self.travel)
        elif direction == "up":
            start_y = uniform(low + self.travel, high)
        elif direction == "down":
            start_y = uniform(low, high - self.travel)
        return {"color": color, "shape": shape, "direction": direction, "start": (start_y, start_x)}

    def render(self, color: str, shape: str, direction: str | None, start: tuple[float, float]) -> Tensor:
        step_y, step_x = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0), None: (0, 0)}[direction]
        frames = []
        for frame in range(self.num_frames):
            progress = frame / max(self.num_frames - 1, 1) * self.travel
            mask = shape_mask(
                shape, start[0] + step_y * progress, start[1] + step_x * progress, self.radius, self.image_size
            )
            canvas = torch.tensor(BACKGROUND).view(3, 1, 1).expand(3, self.image_size, self.image_size).clone()
            canvas[:, mask] = torch.tensor(COLORS[color]).view(3, 1)
            frames.append(canvas)
        return torch.stack(frames, dim=1)  # (3, frames, height, width)

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_samples} samples")
        attributes = self.attributes(index)
        video = self.render(attributes["color"], attributes["shape"], attributes["direction"], attributes["start"])
        caption = make_caption(attributes["color"], attributes["shape"], attributes["direction"])
        item = (video[:, 0] if self.images else video, caption)
        if self.text_embeddings is None:
            return item
        lookup = self.text_embeddings
        embeds, mask = lookup(caption) if callable(lookup) else lookup[caption]
        return (*item, embeds, mask)


class CaptionScorer:
    """Measures colour, shape and motion from pixels and compares them with captions.

    The foreground is every pixel far enough from the frame's background colour (the median of its
    border). Colour is the palette entry nearest the mean foreground colour; shape comes from how the
    foreground fills its bounding box (triangles put three quarters of their area in the lower half,
    squares fill the box, circles fill pi/4 of it); direction is the dominant axis and sign of the
    foreground centroid's displacement from the first frame to the last.
    """

    def __init__(
        self, foreground_threshold: float = 0.25, min_foreground_pixels: int = 4, min_displacement: float = 1.0
    ):
        self.foreground_threshold = foreground_threshold
        self.min_foreground_pixels = min_foreground_pixels
        self.min_displacement = min_displacement
        self.palette = torch.tensor(list(COLORS.values()))

    def _foreground(self, frame: Tensor) -> Tensor:
        border = torch.cat([frame[:, 0], frame[:, -1], frame[:, :, 0], frame[:, :, -1]], dim=1)
        background = border.median(dim=1).values.view(3, 1, 1)
        return (frame - background).norm(dim=0) > self.foreground_threshold

    def measure(self, video: Tensor) -> dict[str, str | None]:
        """Attributes of one video `(3, frames, h, w)` (or image `(3, h, w)`); None where not measurable."""
        if video.ndim == 3:
            video = video.unsqueeze(1)
        video = video.float().clamp(0, 1)
        masks = [self._foreground(video[:, t]) for t in range(video.shape[1])]
        counts = torch.stack([m.sum() for m in masks])
        if counts.min() < self.min_foreground_pixels:
            return {"color": None, "shape": None, "direction": None}
        pixels = torch.cat([video[:, t][:, m] for t, m in enumerate(masks)], dim=1)  # (3, n)
        color = list(COLORS)[int((self.palette - pixels.mean(dim=1)).norm(dim=1).argmin())]

        fills, lower_shares, centroids = [], [], []
        for mask in masks:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
            area = (bottom - top + 1) * (right - left + 1)
            fills.append(float(mask.sum() / area))
            middle = (top + bottom).float() / 2
            lower_shares.append(float((ys.float() > middle).sum() / max(int((ys.float() != middle).sum()), 1)))
            centroids.append(torch.stack([ys.float().mean(), xs.float().mean()]))
        fill, lower_share = sum(fills) / len(fills), sum(lower_shares) / len(lower_shares)
        if lower_share > 0.65:
            shape = "triangle"
        elif fill > 0.9:
            shape = "square"
        else:
            shape = "circle"

        direction = None
        if len(centroids) > 1:
            dy, dx = (centroids[-1] - centroids[0]).tolist()
            if max(abs(dy), abs(dx)) >= self.min_displacement:
                direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
        return {"color": color, "shape": shape, "direction": direction}

    def score(self, videos: Tensor, captions: Sequence[str]) -> dict[str, float]:
        """Fractions of samples whose measured colour, shape, direction (videos only) and all of them match.

        `videos`: `(batch, 3, frames, h, w)` or images `(batch, 3, h, w)` in [0, 1]; `captions`: one per sample.
        """
        check_tensor("videos", videos, ndim=(4, 5), names=("batch", "channels", "[frames]", "height", "width"))
        if videos.shape[1] != 3:
            raise ValueError(f"videos: expected 3 (RGB) channels in dim 1, got shape {tuple(videos.shape)}")
        if len(captions) != videos.shape[0]:
            raise ValueError(f"captions: expected one caption per video ({videos.shape[0]}), got {len(captions)}")
        hits = {"color": 0, "shape": 0, "direction": 0, "all": 0}
        with_direction = 0
        for video, caption in zip(videos, captions):
            wanted, measured = caption_attributes(caption), self.measure(video)
            matched = {key: measured[key] == wanted[key] for key in ("color", "shape")}
            if wanted["direction"] is not None:
                with_direction += 1
                matched["direction"] = measured["direction"] == wanted["direction"]
                hits["direction"] += matched["direction"]
            hits["color"] += matched["color"]
            hits["shape"] += matched["shape"]
            hits["all"] += all(matched.values())
        n = len(captions)
        result = {"color": hits["color"] / n, "shape": hits["shape"] / n, "all": hits["all"] / n, "n": n}
        result["direction"] = hits["direction"] / with_direction if with_direction else math.nan
        return result

    @staticmethod
    def describe(result: Mapping[str, float]) -> str:
        """A plain-language line for people: what the score means."""
        parts = [f"{result['color']:.0%} have the prompted colour", f"{result['shape']:.0%} the prompted shape"]
        if not math.isnan(result.get("direction", math.nan)):
            parts.append(f"{result['direction']:.0%} move the prompted way")
        chance = 1 / (
            len(COLORS) * len(SHAPES) * (len(DIRECTIONS) if not math.isnan(result.get("direction", math.nan)) else 1)
        )
        return (
            f"Of {result['n']} samples, " + ", ".join(parts) + f"; {result['all']:.0%} match the whole prompt "
            f"(random pictures would match about {chance:.0%}, the training data 100%)."
        )
