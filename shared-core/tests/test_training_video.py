"""VideoTrainer: one generative model trained on captioned videos and/or images through the core data path; the
same train_step / fit / resume= / save / load / save_pretrained as every trainer. A tiny model that learns the mean
colour of its captioned videos stands in for the packages' models."""

import pytest
import torch
from torch import nn

from synthesis_core.checkpoint import PretrainedMixin
from synthesis_core.testing import write_moving_gif
from synthesis_core.training import VideoTrainer, dataset_captions, unpack_batch
from synthesis_core.video import read_video, save_video

CAPTIONS = ["red", "blue", "green", "red"]


class ColourModel(PretrainedMixin, nn.Module):
    """Predicts the mean colour of a video (or image) from its caption's word; samples flat videos of it."""

    def __init__(self, image_size: int = 8, num_frames: int = 3, channels: int = 3):
        super().__init__()
        self.image_size, self.num_frames, self.channels = image_size, num_frames, channels
        self.words = {"red": 0, "blue": 1, "green": 2}
        self.colours = nn.Embedding(4, channels)  # row 3: no caption
        self.calls = []

    def rows(self, texts, batch):
        ids = [self.words.get(t, 3) for t in texts] if texts is not None else [3] * batch
        return self.colours(torch.tensor(ids))

    def forward(self, pixels, texts=None):
        self.calls.append((pixels.ndim, None if texts is None else list(texts)))
        target = pixels.mean(dim=tuple(range(2, pixels.ndim)))
        return ((self.rows(texts, pixels.shape[0]) - target) ** 2).mean()

    def sample(self, texts=None, batch_size=1, cond_scale=1.0, progress=True, steps=None):
        colours = self.rows(texts, batch_size if texts is None else len(texts)).clamp(0, 1)
        return colours[:, :, None, None, None].expand(-1, -1, self.num_frames, self.image_size, self.image_size)


COLOURS = {"red": (0.9, 0.1, 0.1), "blue": (0.1, 0.1, 0.9), "green": (0.1, 0.9, 0.1)}


def write_folder(folder, size=8):
    """Captioned gifs of the caption's colour (the first three) and a moving texture (the fourth)."""
    folder.mkdir()
    for k, caption in enumerate(CAPTIONS):
        if k < 3:
            save_video(
                torch.tensor(COLOURS[caption])[:, None, None, None].expand(3, 3, size, size), folder / f"{k}.gif"
            )
        else:
            write_moving_gif(folder / f"{k}.gif", 3, size, k)
        (folder / f"{k}.txt").write_text(caption)
    return folder


def make_trainer(tmp_path, **kwargs):
    settings = dict(
        with_captions=True,
        batch_size=2,
        num_train_steps=4,
        lr=0.05,
        cosine_decay=False,
        ema_update_every=1,
        ema_update_after_step=0,
        sample_every=None,
        save_every=None,
        cpu=True,
        seed=0,
        results_folder=tmp_path / "run",
    )
    settings.update(kwargs)
    return VideoTrainer(ColourModel(), **settings)


def test_trains_on_a_captioned_folder_and_the_loss_falls(tmp_path):
    trainer = make_trainer(
        tmp_path, video_folder=write_folder(tmp_path / "videos"), batch_size=4, num_train_steps=60, lr=0.1
    )
    first = trainer.train_step()
    assert set(first) == {"loss"} and isinstance(first["loss"], float)
    losses = [trainer.train_step()["loss"] for _ in range(59)]
    assert sum(losses[-5:]) / 5 < first["loss"] / 5
    blue = trainer.model.colours.weight[1].detach()
    torch.testing.assert_close(blue, torch.tensor(COLOURS["blue"]), atol=0.1, rtol=0)  # it learnt the colour
    assert {c for _, texts in trainer.model.calls for c in texts} == set(CAPTIONS)  # the captions reached it


def test_fit_runs_periodic_samples_and_checkpoints_then_resume_and_publish(tmp_path):
    videos = write_folder(tmp_path / "videos")
    trainer = make_trainer(tmp_path, video_folder=videos, sample_every=2, save_every=2, num_samples=2)
    assert trainer.fit() == 4
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("sample-*.gif")) == ["sample-2.gif", "sample-4.gif"]
    assert read_video(run / "sample-4.gif").shape[1] == 3
    assert trainer.checkpoints.latest().name.endswith("04.safetensors")
    assert trainer.sample_captions(5) == ["red", "blue", "green", "red", "red"]

    resumed = make_trainer(tmp_path, video_folder=videos, num_train_steps=6, resume="latest")
    assert resumed.step_count == 4
    for a, b in zip(trainer.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    folder = resumed.train()
    assert resumed.step_count == 6 and folder == run / "model"
    published = ColourModel.from_pretrained(folder)
    assert torch.equal(published.colours.weight, resumed.ema_model.colours.weight)


def test_co_training_images_and_videos_from_datasets(tmp_path):
    videos = [(torch.rand(3, 3, 8, 8), c) for c in CAPTIONS]
    images = [(torch.rand(3, 8, 8), c) for c in CAPTIONS]
    trainer = make_trainer(tmp_path, video_dataset=videos, image_dataset=images, image_loss_weight=0.5)
    logs = trainer.train_step()
    assert logs["loss"] == pytest.approx(logs["video_loss"] + 0.5 * logs["image_loss"])
    assert [ndim for ndim, _ in trainer.model.calls] == [5, 4]
    without = make_trainer(tmp_path / "b", video_dataset=videos, with_captions=False)
    without.train_step()
    assert without.model.calls[-1][1] is None  # no captions passed on


def test_unpack_batch_and_dataset_captions():
    pixels, embeds, mask = torch.rand(2, 3, 8, 8), torch.rand(2, 4, 6), torch.ones(2, 4, dtype=torch.bool)
    assert unpack_batch(pixels)[1] == {}
    assert unpack_batch([pixels, ("a", "b")])[1] == {"texts": ["a", "b"]}
    assert unpack_batch([pixels, embeds, mask])[1]["text_embeds"] is embeds
    assert unpack_batch([pixels, ["a", "b"], embeds, mask])[1]["text_mask"] is mask
    with pytest.raises(TypeError, match="batch"):
        unpack_batch({"videos": pixels})
    assert dataset_captions([(pixels[0], "x"), (pixels[1], "y")], 5) == ["x", "y"]
    assert dataset_captions([pixels[0]], 2) == []


def test_bad_arguments_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="give training data"):
        make_trainer(tmp_path)
    with pytest.raises(ValueError, match="video_folder: .* is not a folder"):
        make_trainer(tmp_path, video_folder=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="video_folder: no readable videos with a caption"):
        make_trainer(tmp_path, video_folder=tmp_path / "empty")
    with pytest.raises(ValueError, match="video_folder: pass either"):
        make_trainer(tmp_path, video_folder=tmp_path / "empty", video_dataset=[torch.rand(3, 3, 8, 8)])
    with pytest.raises(ValueError, match="image_loss_weight"):
        make_trainer(tmp_path, video_dataset=[torch.rand(3, 3, 8, 8)], image_loss_weight=-1)
    with pytest.raises(TypeError, match="model"):
        VideoTrainer("not a model", video_dataset=[torch.rand(3, 3, 8, 8)])
