import math

import pytest
import torch
from PIL import Image

from synthesis_core.video import (
    contact_sheet,
    make_grid,
    read_image,
    read_video,
    save_image,
    save_video,
    tensor_to_pil,
    to_uint8,
    video_to_pil_frames,
)


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of two tensors in [0, 1] (how close a lossy round trip came back)."""
    mse = torch.nn.functional.mse_loss(a.float(), b.float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def quantized(x):
    """What an 8-bit file can hold exactly."""
    return to_uint8(x).float() / 255


def few_colour_video(frames=6, h=16, w=12, colours=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    palette = torch.randint(0, 256, (colours, 3), generator=g)
    index = torch.randint(0, colours, (frames, h, w), generator=g)
    return palette[index].permute(3, 0, 1, 2).float() / 255  # (c, t, h, w)


def smooth_video(frames=8, h=18, w=22):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack(
        [
            torch.stack(
                [0.2 + 0.6 * xx, 0.3 + 0.5 * yy * (1 - i / 16), 0.5 + 0.3 * torch.sin(math.pi * (xx + yy + i / 8))]
            )
            for i in range(frames)
        ],
        1,
    )


def test_gif_round_trip_is_exact_for_palette_free_frames(tmp_path):
    video = few_colour_video()
    video[:, 2] = video[:, 1]  # identical consecutive frames, which Pillow merges when writing
    video[:, 3] = video[:, 1]
    save_video(video, tmp_path / "a.gif", fps=10)
    assert torch.equal(read_video(tmp_path / "a.gif"), video)

    # every pixel its own colour (256 colours per frame) is still exact; per-frame palettes differ
    dense = quantized(torch.rand(3, 4, 16, 16))
    save_video(dense, tmp_path / "dense.gif")
    assert torch.equal(read_video(tmp_path / "dense.gif"), dense)

    static = quantized(torch.rand(3, 1, 8, 8)).expand(-1, 5, -1, -1)  # all frames equal
    save_video(static, tmp_path / "static.gif")
    assert read_video(tmp_path / "static.gif").shape == (3, 5, 8, 8)

    gray = quantized(torch.rand(1, 3, 8, 8))
    save_video(gray, tmp_path / "gray.gif")
    assert torch.equal(read_video(tmp_path / "gray.gif", mode="L"), gray)


def test_gif_with_many_colours_is_close(tmp_path):
    video = torch.rand(3, 3, 24, 24)  # 576 colours per frame: quantised
    save_video(video, tmp_path / "many.gif")
    back = read_video(tmp_path / "many.gif")
    assert back.shape == video.shape and psnr(back, video) > 20


def test_png_folder_and_image_round_trip_exact(tmp_path):
    video = torch.rand(3, 5, 10, 14)
    save_video(video, tmp_path / "frames")
    assert sorted(p.name for p in (tmp_path / "frames").iterdir())[:2] == ["00000.png", "00001.png"]
    assert torch.equal(read_video(tmp_path / "frames"), quantized(video))

    image = torch.rand(3, 9, 7)
    save_image(image, tmp_path / "img.png")
    assert torch.equal(read_image(tmp_path / "img.png"), quantized(image))


@pytest.mark.parametrize("size", [(18, 22), (17, 21)])
def test_mp4_round_trip_psnr(tmp_path, size):
    video = smooth_video(h=size[0], w=size[1])
    save_video(video, tmp_path / "v.mp4", fps=8)
    back = read_video(tmp_path / "v.mp4")
    assert back.shape == video.shape  # odd sizes are padded for yuv420p and cropped back
    assert psnr(back, video) > 35


def test_contact_sheet_and_grid(tmp_path):
    videos = torch.rand(2, 3, 4, 6, 5)
    sheet = contact_sheet(videos)
    assert sheet.shape == (3, 12, 20)
    assert torch.equal(sheet[:, 6:12, 5:10], videos[1, :, 1])  # row = video, column = frame
    save_video(videos, tmp_path / "sheet.png")
    assert torch.equal(read_image(tmp_path / "sheet.png"), quantized(sheet))

    batch = torch.rand(5, 3, 2, 4, 4)
    grid = make_grid(batch, nrow=3)
    assert grid.shape == (3, 2, 8, 12)
    assert torch.equal(grid[:, :, 4:8, 4:8], batch[4]) and (grid[:, :, 4:8, 8:] == 0).all()
    assert make_grid(torch.rand(4, 3, 5, 5)).shape == (3, 10, 10)
    assert make_grid(torch.rand(2, 3, 4, 4), padding=1).shape == (3, 4, 9)

    save_video(batch, tmp_path / "grid.gif", nrow=3)
    assert read_video(tmp_path / "grid.gif").shape == (3, 2, 8, 12)


def test_pil_helpers():
    frames = video_to_pil_frames(torch.rand(3, 4, 8, 6))
    assert len(frames) == 4 and frames[0].size == (6, 8) and frames[0].mode == "RGB"
    assert tensor_to_pil(torch.rand(1, 5, 5)).mode == "L"
    assert isinstance(tensor_to_pil(torch.rand(4, 5, 5)), Image.Image)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="video"):
        save_video(torch.rand(3, 8, 8), tmp_path / "a.gif")
    with pytest.raises(ValueError, match="channels"):
        save_video(torch.rand(2, 4, 8, 8), tmp_path / "a.gif")
    with pytest.raises(TypeError, match="video"):
        save_video([[0.0]], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="format"):
        save_video(torch.rand(3, 2, 8, 8), tmp_path / "a.xyz")
    with pytest.raises(ValueError, match="fps"):
        save_video(torch.rand(3, 2, 8, 8), tmp_path / "a.gif", fps=0)
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.gif")
