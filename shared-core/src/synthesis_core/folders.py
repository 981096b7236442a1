"""Datasets over folders of images and videos, with sidecar captions or pre-computed text embeddings.

Both datasets look at every file once when built (a cheap header read) and leave out the unreadable ones with a
warning that names them (`dataset.skipped`); a file that fails later, while being decoded, is skipped the same way
and the next readable item is returned instead. Items are floats in [0, 1]: images `(c, h, w)`, videos
`(c, t, h, w)`, resized (shorter side) and centre-cropped to `image_size`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from synthesis_core.checks import check_choice, check_positive_int
from synthesis_core.text import PrecomputedTextEmbeddings
from synthesis_core.video import _COMMENT_PREFIX, IMAGE_SUFFIXES, _frame_files, pil_to_tensor, read_video

logger = logging.getLogger(__name__)

# what can go wrong when decoding a user's file: PIL raises OSError/ValueError (UnidentifiedImageError is an
# OSError), PyAV raises av.error.* (subclasses of OSError/ValueError), our readers raise ValueError
DECODE_ERRORS = (OSError, ValueError, EOFError, RuntimeError, SyntaxError)


def _normalize_size(name: str, size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        check_positive_int(name, size)
        return size, size
    if isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"{name}: expected a positive int or (height, width), got {size!r}")


def _normalize_exts(exts: Sequence[str]) -> tuple[str, ...]:
    if isinstance(exts, str):
        exts = (exts,)
    return tuple(f".{e.lower().lstrip('.')}" for e in exts)


def resize_and_center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`(..., h, w)` -> `(..., *size)`: scale so the image covers `size` (antialiased), then crop the centre."""
    h, w = x.shape[-2:]
    target_h, target_w = size
    if (h, w) == (target_h, target_w):
        return x
    scale = max(target_h / h, target_w / w)
    new_h, new_w = max(target_h, round(h * scale)), max(target_w, round(w * scale))
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    if (new_h, new_w) != (h, w):
        flat = F.interpolate(flat, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    flat = flat[..., top : top + target_h, left : left + target_w].clamp(0.0, 1.0)
    return flat.reshape(*lead, *flat.shape[-3:])


def read_caption(path: Path) -> str | None:
    """The caption in the sidecar `name.txt` next to `path` (None when there is none)."""
    sidecar = path.with_suffix(".txt") if path.is_file() else path.parent / f"{path.name}.txt"
    if not sidecar.is_file():
        return None
    return sidecar.read_text(encoding="utf-8").strip()


class _SkippingDataset(Dataset):
    """Shared bookkeeping: the list of usable files and of those skipped (with the reason)."""

    def __init__(self):
        self.paths: list[Path] = []
        self.skipped: list[Path] = []
        self.skip_reasons: dict[str, str] = {}

    def _skip(self, path: Path, err: BaseException | str) -> None:
        reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        if path not in self.skipped:
            self.skipped.append(path)
            self.skip_reasons[str(path)] = reason
        logger.warning("skipping %s: %s", path, reason)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> Any:  # implemented by subclasses
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index: expected an item in [0, {len(self)}), got {index}")
        index %= len(self)
        # a file that passed the header check can still fail to decode: skip it, return the next one
        for offset in range(len(self)):
            path = self.paths[(index + offset) % len(self)]
            if path in self.skipped:
                continue
            try:
                return self._load((index + offset) % len(self))
            except DECODE_ERRORS as err:
                self._skip(path, err)
        raise RuntimeError(
            f"no readable file left in the dataset ({len(self.skipped)} skipped: "
            f"{', '.join(map(str, self.skipped[:5]))})"
        )


class ImageFolderDataset(_SkippingDataset):
    """Images found (recursively) in `folder` -> `(c, h, w)` in [0, 1], or `(image, caption)` with captions.

    Captions come from a sidecar `name.txt`; with `with_captions=True` images without one are left out (with a
    warning). `augment_horizontal_flip` flips half the items at random.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        image_size: int | Sequence[int],
        exts: Sequence[str] = ("png", "jpg", "jpeg", "webp"),
        with_captions: bool = False,
        channels: int = 3,
        augment_horizontal_flip: bool = False,
    ):
        super().__init__()
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"folder: {self.folder} is not a folder")
        self.image_size = _normalize_size("image_size", image_size)
        check_choice("channels", channels, (1, 3))
        self.mode = "RGB" if channels == 3 else "L"
        self.with_captions = with_captions
        self.augment_horizontal_flip = augment_horizontal_flip
        self.exts = _normalize_exts(exts)
        self.captions: dict[Path, str] = {}
        missing_captions = 0
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in self.exts):
            try:
                with Image.open(path) as image:
                    image.verify()  # header and structure, without decoding the pixels
            except DECODE_ERRORS as err:
                self._skip(path, err)
                continue
            if with_captions:
                caption = read_caption(path)
                if caption is None:
                    missing_captions += 1
                    continue
                self.captions[path] = caption
            self.paths.append(path)
        if missing_captions:
            logger.warning(
                "%d image(s) in %s have no caption file (name.txt) and are left out", missing_captions, self.folder
            )
        if not self.paths:
            logger.warning("no usable %s images in %s", "/".join(self.exts), self.folder)

    def _load(self, index: int) -> Tensor | tuple[Tensor, str]:
        path = self.paths[index]
        with Image.open(path) as image:
            tensor = pil_to_tensor(image, self.mode)
        tensor = resize_and_center_crop(tensor, self.image_size)
        if self.augment_horizontal_flip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
        if self.with_captions:
            return tensor, self.captions[path]
        return tensor


def fit_num_frames(video: Tensor, num_frames: int, frame_mode: str = "crop", start: int = 0) -> Tensor:
    """`(c, t, h, w)` -> `(c, num_frames, h, w)`: longer clips keep `num_frames` frames from `start`; shorter ones
    are padded by repeating their last frame when `frame_mode='pad'` (ValueError when 'crop')."""
    t = video.shape[1]
    if t >= num_frames:
        return video[:, start : start + num_frames]
    if frame_mode != "pad":
        raise ValueError(f"video: has {t} frames, fewer than num_frames={num_frames} (use frame_mode='pad')")
    padding = video[:, -1:].expand(-1, num_frames - t, -1, -1)
    return torch.cat([video, padding], dim=1)


def _count_frames(path: Path) -> int:
    """Frame count from the file header (raises on unreadable files)."""
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise ValueError("the folder holds no frames")
        with Image.open(files[0]) as image:
            image.verify()
        return len(files)
    if path.suffix.lower() == ".gif":
        with Image.open(path) as image:
            comment = image.info.get("comment", b"")
            comment = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
            match = re.search(rf"{_COMMENT_PREFIX} frames=(\d+)", comment)
            # Pillow merges identical consecutive frames; our gifs record the real count
            return int(match.group(1)) if match else getattr(image, "n_frames", 1)
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(video=0))


class VideoFolderDataset(_SkippingDataset):
    """Videos in `folder` (gif, mp4, ... and sub-folders of png/jpg frames) -> `(c, num_frames, h, w)` in [0, 1].

    `frame_mode='crop'` keeps `num_frames` frames of longer clips (from the start, or a random window with
    `random_offset=True`) and skips (with a warning, in `skipped`) clips that are too short; `'pad'` also pads
    short clips by repeating their last frame. With `with_captions=True` items are `(video, caption)` (sidecar `name.txt`); with
    `text_embeddings` (a `PrecomputedTextEmbeddings` or its folder) items are `(video, embeds, mask)`, the rows of
    the sidecar captions.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        image_size: int | Sequence[int],
        num_frames: int,
        frame_mode: str = "crop",
        with_captions: bool = False,
        text_embeddings: PrecomputedTextEmbeddings | str | os.PathLike | None = None,
        exts: Sequence[str] = ("gif", "mp4", "webm", "mov", "avi", "mkv"),
        frame_folders: bool = True,
        channels: int = 3,
        random_offset: bool = False,
    ):
        super().__init__()
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"folder: {self.folder} is not a folder")
        self.image_size = _normalize_size("image_size", image_size)
        self.num_frames = check_positive_int("num_frames", num_frames)
        self.frame_mode = check_choice("frame_mode", frame_mode, ("crop", "pad"))
        check_choice("channels", channels, (1, 3))
        self.mode = "RGB" if channels == 3 else "L"
        self.random_offset = random_offset
        self.with_captions = with_captions
        self.exts = _normalize_exts(exts)
        if text_embeddings is not None and not isinstance(text_embeddings, PrecomputedTextEmbeddings):
            text_embeddings = PrecomputedTextEmbeddings(text_embeddings)
        self.text_embeddings = text_embeddings
        self.captions: dict[Path, str] = {}
        self.frame_counts: dict[Path, int] = {}

        candidates = [p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in self.exts]
        if frame_folders:
            for sub in [self.folder, *(p for p in self.folder.rglob("*") if p.is_dir())]:
                if sub != self.folder and any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()):
                    candidates.append(sub)
        needs_caption = with_captions or text_embeddings is not None
        missing_captions = 0
        for path in sorted(candidates):
            try:
                count = _count_frames(path)
            except DECODE_ERRORS as err:
                self._skip(path, err)
                continue
            if count < self.num_frames and frame_mode == "crop":
                self._skip(
                    path,
                    f"{count} frames, fewer than num_frames={num_frames} with frame_mode='crop' "
                    "(use frame_mode='pad' to keep short clips)",
                )
                continue
            if needs_caption:
                caption = read_caption(path)
                if caption is None:
                    missing_captions += 1
                    continue
                if text_embeddings is not None and caption not in text_embeddings:
                    raise KeyError(
                        f"text_embeddings: the caption {caption!r} of {path} was not pre-computed "
                        f"in {text_embeddings.folder}"
                    )
                self.captions[path] = caption
            self.frame_counts[path] = count
            self.paths.append(path)
        if missing_captions:
            logger.warning(
                "%d video(s) in %s have no caption file (name.txt) and are left out", missing_captions, self.folder
            )
        if not self.paths:
            logger.warning("no usable videos (%s or frame folders) in %s", "/".join(self.exts), self.folder)

    def _load(self, index: int) -> Any:
        path = self.paths[index]
        video = read_video(path, mode=self.mode)
        t = video.shape[1]
        if t < self.num_frames and self.frame_mode == "crop":
            raise ValueError(
                f"{t} frames, fewer than num_frames={self.num_frames} (frame_mode='crop'; "
                "use frame_mode='pad' to keep short clips)"
            )
        start = 0
        if self.random_offset and t > self.num_frames:
            start = int(torch.randint(0, t - self.num_frames + 1, ()))
        video = fit_num_frames(video, self.num_frames, self.frame_mode, start)
        video = resize_and_center_crop(rearrange(video, "c t h w -> t c h w"), self.image_size)
        video = rearrange(video, "t c h w -> c t h w").contiguous()
        if self.text_embeddings is not None:
            embeds, mask = self.text_embeddings.lookup(self.captions[path])
            return video, embeds, mask
        if self.with_captions:
            return video, self.captions[path]
        return video


__all__ = [
    "ImageFolderDataset",
    "VideoFolderDataset",
    "fit_num_frames",
    "resize_and_center_crop",
    "read_caption",
    "DECODE_ERRORS",
]
