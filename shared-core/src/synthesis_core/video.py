"""Reading and writing videos and images: gif (Pillow), mp4 (PyAV, H.264), png contact sheets and frame folders.

One layout everywhere: a video is `(channels, frames, height, width)` (a batch adds a leading dim), floats in
[0, 1]. `save_video` picks the format from the suffix:

- `.gif`: frames with at most 256 colours are written with an exact palette (lossless); others are quantised.
  Pillow merges identical consecutive frames, so the frame count and duration are kept in the gif comment and
  `read_video` expands the frames back.
- `.mp4`: H.264 (libx264, yuv420p) with a careful BT.709 colour conversion done here (better than swscale's
  fast path for small frames); odd sizes are padded to even ones and cropped back on reading.
- `.png` / `.jpg` / `.webp`: a contact sheet, the frames of each video left to right, one video per row.
- no suffix: a folder of numbered png frames.
A batch of videos is tiled into a grid (`make_grid`) for gif, mp4 and frame folders.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image, ImageSequence
from torch import Tensor

from synthesis_core.checks import check_tensor

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv")
_COMMENT_PREFIX = "synthesis-video"


# ----------------------------------------------------------------------------------------------------------------
# tensors <-> PIL
# ----------------------------------------------------------------------------------------------------------------


def to_uint8(x: Tensor) -> Tensor:
    """Floats in [0, 1] -> uint8 in [0, 255] (clamped, rounded)."""
    return (x.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()


def _check_channels(name: str, x: Tensor, channel_dim: int) -> None:
    if x.shape[channel_dim] not in (1, 3, 4):
        raise ValueError(f"{name}: expected 1, 3 or 4 channels at dim {channel_dim}, got shape {tuple(x.shape)}")


def tensor_to_pil(image: Tensor) -> Image.Image:
    """`(c, h, w)` in [0, 1] (c = 1, 3 or 4) -> a PIL image ('L', 'RGB' or 'RGBA')."""
    check_tensor("image", image, ndim=3, names=("channels", "height", "width"), dtype_floating=True)
    _check_channels("image", image, 0)
    array = rearrange(to_uint8(image), "c h w -> h w c").numpy()
    if array.shape[-1] == 1:
        return Image.fromarray(array[..., 0], mode="L")
    return Image.fromarray(array, mode="RGB" if array.shape[-1] == 3 else "RGBA")


def pil_to_tensor(image: Image.Image, mode: str = "RGB") -> Tensor:
    """A PIL image -> `(c, h, w)` float in [0, 1] (converted to `mode` first)."""
    if image.mode != mode:
        image = image.convert(mode)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    return rearrange(torch.from_numpy(array.copy()), "h w c -> c h w").float() / 255.0


def video_to_pil_frames(video: Tensor) -> list[Image.Image]:
    """`(c, t, h, w)` in [0, 1] -> one PIL image per frame."""
    check_tensor("video", video, ndim=4, names=("channels", "frames", "height", "width"), dtype_floating=True)
    return [tensor_to_pil(frame) for frame in video.unbind(dim=1)]


# ----------------------------------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------------------------------


def make_grid(videos: Tensor, nrow: int | None = None, padding: int = 0, pad_value: float = 0.0) -> Tensor:
    """Tiles a batch into one: `(b, c, t, h, w) -> (c, t, H, W)` or images `(b, c, h, w) -> (c, H, W)`.

    `nrow` items per row (default: ceil(sqrt(b))); missing cells are filled with `pad_value`; `padding` pixels
    separate the cells.
    """
    check_tensor("videos", videos, ndim=(4, 5), dtype_floating=True)
    is_image = videos.ndim == 4
    if is_image:
        videos = rearrange(videos, "b c h w -> b c 1 h w")
    batch = videos.shape[0]
    if batch == 0:
        raise ValueError("videos: expected at least one item, got an empty batch")
    nrow = nrow or math.ceil(math.sqrt(batch))
    if nrow < 1:
        raise ValueError(f"nrow: expected a positive number of items per row, got {nrow}")
    nrow = min(nrow, batch)
    rows = math.ceil(batch / nrow)
    if padding:
        videos = F.pad(videos, (0, padding, 0, padding), value=pad_value)
    missing = rows * nrow - batch
    if missing:
        filler = torch.full((missing, *videos.shape[1:]), pad_value, dtype=videos.dtype, device=videos.device)
        videos = torch.cat([videos, filler], dim=0)
    grid = rearrange(videos, "(r k) c t h w -> c t (r h) (k w)", r=rows, k=nrow)
    if padding:  # drop the trailing separator
        grid = grid[..., : grid.shape[-2] - padding, : grid.shape[-1] - padding]
    return grid[:, 0] if is_image else grid


def contact_sheet(videos: Tensor) -> Tensor:
    """`(b, c, t, h, w)` or `(c, t, h, w)` -> image `(c, b * h, t * w)`: each video's frames left to right."""
    if videos.ndim == 4:
        videos = rearrange(videos, "c t h w -> 1 c t h w")
    return rearrange(videos, "b c t h w -> c (b h) (t w)")


def _as_single_video(video: Tensor, nrow: int | None) -> Tensor:
    check_tensor("video", video, ndim=(4, 5), names=None, dtype_floating=True)
    if video.ndim == 5:
        video = make_grid(video, nrow=nrow)
    _check_channels("video", video, 0)
    return video


# ----------------------------------------------------------------------------------------------------------------
# gif
# ----------------------------------------------------------------------------------------------------------------


def _exact_palette_frame(rgb: np.ndarray) -> Image.Image | None:
    """A 'P' image holding exactly the colours of `rgb` (h, w, 3), or None when it has more than 256."""
    flat = rgb.reshape(-1, 3)
    colours, indices = np.unique(flat, axis=0, return_inverse=True)
    if len(colours) > 256:
        return None
    frame = Image.fromarray(indices.reshape(rgb.shape[:2]).astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colours)] = colours
    frame.putpalette(palette.reshape(-1).tolist())
    return frame


def _write_gif(video: Tensor, path: Path, fps: float, loop: int) -> None:
    frames_uint8 = rearrange(to_uint8(video), "c t h w -> t h w c").numpy()
    frames = []
    lossy = 0
    for array in frames_uint8:
        if array.shape[-1] == 1:
            frames.append(Image.fromarray(array[..., 0], mode="L"))
            continue
        rgb = array[..., :3]  # gif has no alpha channel worth keeping
        exact = _exact_palette_frame(rgb)
        if exact is None:
            lossy += 1
            exact = Image.fromarray(rgb, mode="RGB").quantize(
                256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
            )
        frames.append(exact)
    if lossy:
        logger.debug("%s: %d frame(s) have more than 256 colours and were quantised", path, lossy)
    duration_ms = max(int(round(1000.0 / fps / 10.0)) * 10, 20)  # gif stores centiseconds; viewers clamp < 20 ms
    comment = f"{_COMMENT_PREFIX} frames={len(frames)} frame_ms={duration_ms}"
    frames[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=duration_ms,
        loop=loop,
        comment=comment,
        disposal=1,
    )


def _read_gif(path: Path, mode: str) -> Tensor:
    with Image.open(path) as image:
        comment = image.info.get("comment", b"")
        comment = comment.decode("utf-8", "replace") if isinstance(comment, bytes) else str(comment)
        frames, durations = [], []
        for frame in ImageSequence.Iterator(image):
            frames.append(pil_to_tensor(frame, mode))
            durations.append(frame.info.get("duration", 0))
    match = re.search(rf"{_COMMENT_PREFIX} frames=(\d+) frame_ms=(\d+)", comment)
    if match:  # our own file: undo Pillow's merging of identical consecutive frames
        expected, frame_ms = int(match.group(1)), int(match.group(2))
        repeats = [max(int(round(d / frame_ms)), 1) for d in durations]
        if sum(repeats) == expected:
            frames = [f for f, r in zip(frames, repeats) for _ in range(r)]
    return rearrange(torch.stack(frames), "t c h w -> c t h w")


# ----------------------------------------------------------------------------------------------------------------
# mp4 (PyAV)
# ----------------------------------------------------------------------------------------------------------------

# BT.709, limited ("tv") range: what players assume for H.264 tagged as such
_KR, _KB = 0.2126, 0.0722
_KG = 1.0 - _KR - _KB


def _rgb_to_yuv420(rgb: Tensor) -> np.ndarray:
    """uint8 `(h, w, 3)` (even sizes) -> the packed I420 array `(h * 3 / 2, w)` PyAV uses for yuv420p."""
    x = rearrange(rgb.float() / 255.0, "h w c -> c h w")
    r, g, b = x.unbind(0)
    y = _KR * r + _KG * g + _KB * b
    chroma = torch.stack([(b - y) / (2 * (1 - _KB)), (r - y) / (2 * (1 - _KR))])
    chroma = F.avg_pool2d(rearrange(chroma, "c h w -> 1 c h w"), 2)[0]  # 2x2 box filter: centred 4:2:0
    h, w = y.shape
    luma = (16.0 + 219.0 * y).round().clamp(0, 255)
    chroma = (128.0 + 224.0 * chroma).round().clamp(0, 255)
    planes = torch.cat([luma.reshape(-1), chroma[0].reshape(-1), chroma[1].reshape(-1)])
    return planes.to(torch.uint8).reshape(h * 3 // 2, w).numpy()


def _yuv420_to_rgb(i420: np.ndarray) -> Tensor:
    """Inverse of `_rgb_to_yuv420` (bilinear chroma upsampling): `(h * 3 / 2, w)` -> float `(3, h, w)` in [0, 1]."""
    rows, w = i420.shape
    h = rows * 2 // 3
    flat = torch.from_numpy(np.ascontiguousarray(i420)).float().reshape(-1)
    y = (flat[: h * w].reshape(h, w) - 16.0) / 219.0
    chroma = rearrange(flat[h * w :], "(c h w) -> 1 c h w", c=2, h=h // 2, w=w // 2)
    chroma = F.interpolate((chroma - 128.0) / 224.0, size=(h, w), mode="bilinear", align_corners=False)[0]
    cb, cr = chroma.unbind(0)
    r = y + 2 * (1 - _KR) * cr
    b = y + 2 * (1 - _KB) * cb
    g = (y - _KR * r - _KB * b) / _KG
    return torch.stack([r, g, b]).clamp(0.0, 1.0)


def _write_mp4(video: Tensor, path: Path, fps: float, crf: int) -> None:
    import av

    rgb = rearrange(to_uint8(video), "c t h w -> t h w c")
    if rgb.shape[-1] == 1:
        rgb = rgb.expand(-1, -1, -1, 3)
    rgb = rgb[..., :3]
    t, h, w, _ = rgb.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:  # yuv420p needs even sizes: replicate the last row/column, cropped again by read_video
        rgb = rearrange(
            F.pad(rearrange(rgb, "t h w c -> t c h w").float(), (0, pad_w, 0, pad_h), mode="replicate"),
            "t c h w -> t h w c",
        ).to(torch.uint8)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w", format="mp4") as container:
        container.metadata["comment"] = f"{_COMMENT_PREFIX} width={w} height={h}"
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w + pad_w, h + pad_h
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf)}
        context = stream.codec_context
        context.colorspace, context.color_range = 1, 1  # BT.709, limited range (matches _rgb_to_yuv420)
        context.color_primaries, context.color_trc = 1, 1
        for frame_rgb in rgb:
            frame = av.VideoFrame.from_ndarray(_rgb_to_yuv420(frame_rgb), format="yuv420p")
            frame.colorspace, frame.color_range = 1, 1
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _read_av(path: Path, mode: str) -> Tensor:
    import av

    frames = []
    with av.open(str(path)) as container:
        comment = container.metadata.get("comment", "")
        for frame in container.decode(video=0):
            if frame.format.name == "yuv420p" and frame.colorspace == 1 and frame.color_range in (0, 1):
                frames.append(_yuv420_to_rgb(frame.to_ndarray()))  # our BT.709 conversion, the exact inverse
            else:
                frames.append(pil_to_tensor(frame.to_image(), "RGB"))
    if not frames:
        raise ValueError(f"path: {path} holds no video frames")
    video = rearrange(torch.stack(frames), "t c h w -> c t h w")
    match = re.search(rf"{_COMMENT_PREFIX} width=(\d+) height=(\d+)", comment)
    if match:
        video = video[..., : int(match.group(2)), : int(match.group(1))]
    return _convert_mode(video, mode)


def _convert_mode(video: Tensor, mode: str) -> Tensor:
    if mode == "RGB":
        return video[:3] if video.shape[0] >= 3 else video.expand(3, *video.shape[1:])
    if mode == "L":
        if video.shape[0] == 1:
            return video
        weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)
        return (video[:3] * weights).sum(0, keepdim=True)
    raise ValueError(f"mode: expected 'RGB' or 'L', got {mode!r}")


# ----------------------------------------------------------------------------------------------------------------
# public entry points
# ----------------------------------------------------------------------------------------------------------------


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    # natural order: frame2 before frame10
    return sorted(files, key=lambda p: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)])


def save_video(
    video: Tensor, path: str | os.PathLike, fps: float = 8, nrow: int | None = None, loop: int = 0, crf: int = 12
) -> Path:
    """Writes `video` `(c, t, h, w)` or a batch `(b, c, t, h, w)` (floats in [0, 1]) to `path`.

    The format follows the suffix: `.gif`, `.mp4`, an image suffix (`.png`, ... : contact sheet, one video per
    row) or none (a folder of numbered png frames). A batch is tiled with `make_grid(nrow=...)` except for
    contact sheets. Returns the path written.
    """
    path = Path(path)
    if not isinstance(fps, int | float) or fps <= 0:
        raise ValueError(f"fps: expected a positive number of frames per second, got {fps!r}")
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in IMAGE_SUFFIXES:
        check_tensor("video", video, ndim=(4, 5), dtype_floating=True)
        _check_channels("video", video, video.ndim - 4)
        tensor_to_pil(contact_sheet(video)).save(path)
        return path
    video = _as_single_video(video, nrow)
    if suffix == ".gif":
        _write_gif(video, path, fps, loop)
    elif suffix in VIDEO_SUFFIXES:
        if suffix != ".mp4":
            raise ValueError(f"path: writing {suffix} is not supported; use .mp4, .gif, .png or a folder")
        _write_mp4(video, path, fps, crf)
    elif suffix == "":
        path.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(video_to_pil_frames(video)):
            frame.save(path / f"{i:05d}.png")
    else:
        raise ValueError(f"path: unknown video format {suffix!r}; use .gif, .mp4, .png or no suffix (a folder)")
    return path


def read_video(path: str | os.PathLike, mode: str = "RGB") -> Tensor:
    """Reads a gif, an mp4 (or other container PyAV can decode), a folder of frames or a single image:
    returns `(c, t, h, w)` float in [0, 1] (c = 3 for 'RGB', 1 for 'L')."""
    path = Path(path)
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise ValueError(f"path: the folder {path} holds no {'/'.join(IMAGE_SUFFIXES)} frames")
        frames = []
        for file in files:
            with Image.open(file) as image:
                frames.append(pil_to_tensor(image, mode))
        sizes = {tuple(f.shape) for f in frames}
        if len(sizes) > 1:
            raise ValueError(f"path: the frames in {path} have different sizes {sorted(sizes)}")
        return rearrange(torch.stack(frames), "t c h w -> c t h w")
    if not path.is_file():
        raise FileNotFoundError(f"path: no video at {path}")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return _read_gif(path, mode)
    if suffix in IMAGE_SUFFIXES:
        with Image.open(path) as image:
            return rearrange(pil_to_tensor(image, mode), "c h w -> c 1 h w")
    return _read_av(path, mode)


def save_image(image: Tensor, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Writes `(c, h, w)` or a batch `(b, c, h, w)` (tiled with `make_grid`) in [0, 1] to an image file."""
    check_tensor("image", image, ndim=(3, 4), dtype_floating=True)
    if image.ndim == 4:
        image = make_grid(image, nrow=nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(image).save(path)
    return path


def read_image(path: str | os.PathLike, mode: str = "RGB") -> Tensor:
    """An image file -> `(c, h, w)` float in [0, 1]."""
    with Image.open(path) as image:
        return pil_to_tensor(image, mode)


def video_files(folder: str | os.PathLike, exts: Sequence[str] = ("gif", "mp4")) -> list[Path]:
    folder = Path(folder)
    wanted = {f".{e.lower().lstrip('.')}" for e in exts}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in wanted)


__all__ = [
    "save_video",
    "read_video",
    "save_image",
    "read_image",
    "make_grid",
    "contact_sheet",
    "video_to_pil_frames",
    "tensor_to_pil",
    "pil_to_tensor",
    "to_uint8",
]
