import logging

import pytest
import torch
from torch.utils.data import DataLoader

from synthesis_core.folders import ImageFolderDataset, VideoFolderDataset, fit_num_frames, resize_and_center_crop
from synthesis_core.text import PrecomputedTextEmbeddings, SimpleTextEncoder, precompute_text_embeddings
from synthesis_core.video import read_video, save_image, save_video, to_uint8


def quantized(x):
    return to_uint8(x).float() / 255


def write_video_folder(folder, sizes=((3, 16, 16), (6, 16, 16), (4, 20, 24))):
    """Gifs and one frame folder; returns the videos as they are stored."""
    folder.mkdir()
    videos = {}
    for i, (t, h, w) in enumerate(sizes):
        video = quantized(torch.rand(3, t, h, w))
        name = f"clip{i}.gif" if i != 1 else "clip1"  # clip1 is a folder of png frames
        save_video(video, folder / name)
        (folder / f"clip{i}.txt").write_text(f"caption number {i}\n")
        videos[name] = video
    return videos


def test_video_folder_crop_pad_and_captions(tmp_path):
    videos = write_video_folder(tmp_path / "videos")
    pad = VideoFolderDataset(tmp_path / "videos", image_size=16, num_frames=4, frame_mode="pad", with_captions=True)
    assert [p.name for p in pad.paths] == ["clip0.gif", "clip1", "clip2.gif"] and pad.skipped == []

    video, caption = pad[0]  # 3 frames padded with the last one
    assert caption == "caption number 0" and video.shape == (3, 4, 16, 16)
    assert torch.equal(video[:, :3], videos["clip0.gif"]) and torch.equal(video[:, 3], video[:, 2])
    video, caption = pad[1]  # 6 frames cropped to the first 4
    assert caption == "caption number 1" and torch.equal(video, videos["clip1"][:, :4])
    video, _ = pad[2]  # 20x24 resized (shorter side) and centre cropped
    assert video.shape == (3, 4, 16, 16) and 0 <= video.min() and video.max() <= 1

    crop = VideoFolderDataset(tmp_path / "videos", image_size=16, num_frames=4, frame_mode="crop")
    assert [p.name for p in crop.paths] == ["clip1", "clip2.gif"]  # the 3-frame clip is too short to crop
    assert [p.name for p in crop.skipped] == ["clip0.gif"]
    assert torch.equal(crop[0], videos["clip1"][:, :4])

    random_window = VideoFolderDataset(tmp_path / "videos", image_size=16, num_frames=2, random_offset=True)
    starts = set()
    for _ in range(30):
        clip = random_window[1]  # clip1: 6 frames
        starts.add(next(s for s in range(5) if torch.equal(clip, videos["clip1"][:, s : s + 2])))
    assert len(starts) > 1

    batch = next(iter(DataLoader(pad, batch_size=3)))
    assert batch[0].shape == (3, 3, 4, 16, 16) and list(batch[1]) == [f"caption number {i}" for i in range(3)]


def test_corrupt_files_are_skipped_and_named(tmp_path, caplog):
    write_video_folder(tmp_path / "videos")
    (tmp_path / "videos" / "broken.gif").write_bytes(b"GIF89a not really a gif")
    (tmp_path / "videos" / "empty.mp4").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="synthesis_core.folders"):
        dataset = VideoFolderDataset(tmp_path / "videos", image_size=16, num_frames=4, frame_mode="pad")
    assert sorted(p.name for p in dataset.skipped) == ["broken.gif", "empty.mp4"]
    assert "broken.gif" in caplog.text and "empty.mp4" in caplog.text
    assert len(dataset) == 3

    # a file that breaks after the header check is skipped when read, and the next item is returned
    (tmp_path / "videos" / "clip2.gif").write_bytes(b"GIF89a" + b"\x00" * 10)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synthesis_core.folders"):
        item = dataset[2]
    assert item.shape == (3, 4, 16, 16) and "clip2.gif" in caplog.text
    assert "clip2.gif" in [p.name for p in dataset.skipped]

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        save_image(torch.rand(3, 12, 12), images / f"{i}.png")
    (images / "bad.png").write_bytes(b"\x89PNG garbage")
    with caplog.at_level(logging.WARNING, logger="synthesis_core.folders"):
        image_dataset = ImageFolderDataset(images, image_size=8)
    assert [p.name for p in image_dataset.skipped] == ["bad.png"] and "bad.png" in caplog.text
    assert len(image_dataset) == 3 and image_dataset[0].shape == (3, 8, 8)


def test_image_folder_resize_captions_and_grayscale(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    image = quantized(torch.rand(3, 10, 20))
    save_image(image, folder / "wide.png")
    (folder / "wide.txt").write_text("a wide image")
    save_image(torch.rand(3, 8, 8), folder / "nocaption.png")

    dataset = ImageFolderDataset(folder, image_size=10, with_captions=True)
    assert len(dataset) == 1  # the image without a caption is left out
    tensor, caption = dataset[0]
    assert caption == "a wide image"
    assert torch.equal(tensor, image[:, :, 5:15])  # already the right height: centre crop only, exact
    assert ImageFolderDataset(folder, image_size=(4, 6), channels=1)[0].shape == (1, 4, 6)
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderDataset(folder, image_size=0)
    with pytest.raises(FileNotFoundError, match="folder"):
        ImageFolderDataset(tmp_path / "missing", image_size=8)


def test_video_folder_with_precomputed_embeddings(tmp_path):
    write_video_folder(tmp_path / "videos")
    captions = [f"caption number {i}" for i in range(3)]
    encoder = SimpleTextEncoder.from_captions(captions, dim=8, depth=1, heads=2, dim_head=4).eval()
    folder = precompute_text_embeddings(captions, tmp_path / "emb", encoder, progress=False)
    dataset = VideoFolderDataset(
        tmp_path / "videos", image_size=16, num_frames=4, frame_mode="pad", text_embeddings=folder
    )
    video, embeds, mask = dataset[1]
    expected, expected_mask = PrecomputedTextEmbeddings(folder).lookup("caption number 1")
    assert video.shape == (3, 4, 16, 16) and torch.equal(embeds, expected) and torch.equal(mask, expected_mask)

    (tmp_path / "videos" / "clip0.txt").write_text("never encoded")
    with pytest.raises(KeyError, match="never encoded"):
        VideoFolderDataset(tmp_path / "videos", image_size=16, num_frames=4, frame_mode="pad", text_embeddings=folder)


def test_helpers_and_bad_arguments(tmp_path):
    video = torch.rand(3, 3, 4, 4)
    assert torch.equal(fit_num_frames(video, 2), video[:, :2])
    padded = fit_num_frames(video, 5, "pad")
    assert padded.shape == (3, 5, 4, 4) and torch.equal(padded[:, 4], video[:, 2])
    with pytest.raises(ValueError, match="num_frames"):
        fit_num_frames(video, 5, "crop")
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(resize_and_center_crop(x, (8, 8)), x)
    assert resize_and_center_crop(x, (4, 6)).shape == (2, 3, 4, 6)

    (tmp_path / "v").mkdir()
    with pytest.raises(ValueError, match="frame_mode"):
        VideoFolderDataset(tmp_path / "v", image_size=8, num_frames=4, frame_mode="loop")
    with pytest.raises(ValueError, match="num_frames"):
        VideoFolderDataset(tmp_path / "v", image_size=8, num_frames=0)
    assert len(VideoFolderDataset(tmp_path / "v", image_size=8, num_frames=2)) == 0
    save_video(torch.rand(3, 2, 8, 8), tmp_path / "v" / "a.mp4")
    dataset = VideoFolderDataset(tmp_path / "v", image_size=8, num_frames=2)
    assert len(dataset) == 1 and dataset[0].shape == (3, 2, 8, 8)
    assert read_video(tmp_path / "v" / "a.mp4").shape == (3, 2, 8, 8)
