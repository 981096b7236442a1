"""VQGanVAETrainer and NUWATrainer on tiny data (the CLI: test_cli.py): they train, write samples, save, resume."""

import pytest
import torch
from torch.utils.data import Dataset

from nuwa_pytorch import NUWA, NUWATrainer, VQGanVAE, VQGanVAETrainer, WordTokenizer
from synthesis_core.video import save_video

CAPTIONS = ["a red square moving left", "a blue circle moving right", "a green square moving up"]


class _Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def moving_squares(num_videos=3, num_frames=2, size=16, seed=0):
    """Videos `(b, 3, t, size, size)` (core layout) of a coloured square moving right by one pixel per frame."""
    generator = torch.Generator().manual_seed(seed)
    videos = torch.full((num_videos, 3, num_frames, size, size), 0.1)
    for i in range(num_videos):
        color = torch.rand(3, generator=generator)
        y, x = (int(v) for v in torch.randint(0, size // 2, (2,), generator=generator))
        for t in range(num_frames):
            videos[i, :, t, y : y + size // 4, x + t : x + t + size // 4] = color[:, None, None]
    return videos


@pytest.fixture
def gif_folder(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for index, (video, caption) in enumerate(zip(moving_squares(), CAPTIONS)):
        save_video(video, folder / f"{index}.gif")
        (folder / f"{index}.txt").write_text(caption)
    return folder


def test_word_tokenizer_round_trip(tmp_path):
    tokenizer = WordTokenizer.from_captions(CAPTIONS)
    ids = tokenizer.encode(["a red circle moving left", "a purple cat"], max_length=4)
    assert ids.shape == (2, 4) and ids.dtype == torch.long
    assert ids[1, 3] == 0 and ids[1, 1] == 1  # padding, unknown word
    assert tokenizer.decode(ids)[0] == "a red circle moving"
    tokenizer.save(tmp_path / "tokenizer.json")
    assert WordTokenizer.load(tmp_path).vocab == tokenizer.vocab


def test_vae_trainer_with_gan_trains_saves_and_resumes(make_vae, tiny_vgg, tmp_path):
    def build():
        return make_vae(use_vgg_and_gan=True, vgg=tiny_vgg, discr_dim=8)

    vae = build()
    dataset = _Items(list(moving_squares(num_videos=4)))  # videos: every frame is an image
    kwargs = dict(
        dataset=dataset,
        batch_size=2,
        num_train_steps=2,
        apply_grad_penalty_every=2,
        save_results_every=2,
        save_model_every=2,
        results_folder=tmp_path,
        ema_update_every=1,
        seed=0,
    )
    trainer = VQGanVAETrainer(vae, **kwargs)
    vae_params = {id(p) for group in trainer.optimizers["vae"].param_groups for p in group["params"]}
    assert not vae_params & {id(p) for p in vae.discr.parameters()}
    discr_before = [p.detach().clone() for p in vae.discr.parameters()]
    logs = []
    trainer.train(log_fn=logs.append)
    assert len(logs) == 2 and {"loss", "recon_mse", "discr_loss"} <= set(logs[0])
    assert all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in logs)
    assert any(not torch.equal(a, b) for a, b in zip(discr_before, vae.discr.parameters()))
    assert (tmp_path / "samples" / "recon-00000002.png").is_file()
    assert VQGanVAE.from_pretrained(tmp_path / "vae").codebook_size == vae.codebook_size

    resumed = VQGanVAETrainer(build(), resume="latest", **{**kwargs, "num_train_steps": 3})
    assert resumed.step_count == 2 and resumed.step_counts["discr"] == 2
    resumed.train()
    assert resumed.step_count == 3


def test_vae_samples_do_not_draw_from_the_training_data(make_vae, tmp_path):
    """Samples are written by the main process only: drawing them from the training loader would move it there
    alone and put the processes at different places in the data."""
    trainer = VQGanVAETrainer(
        make_vae(),
        dataset=_Items(list(moving_squares(num_videos=4))),
        batch_size=2,
        num_train_steps=1,
        save_results_every=None,
        save_model_every=None,
        num_sample_images=3,
        results_folder=tmp_path,
        seed=0,
    )
    trainer.train_step()
    position = trainer.dataloader.state_dict()
    assert trainer.save_results().is_file()
    assert trainer.dataloader.state_dict() == position


def test_vae_trainer_without_gan_reads_a_video_folder(make_vae, gif_folder, tmp_path):
    trainer = VQGanVAETrainer(
        make_vae(),
        folder=gif_folder,
        num_frames=2,
        batch_size=2,
        num_train_steps=2,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path,
        seed=0,
    )
    assert "discr" not in trainer.models
    trainer.train()
    assert (tmp_path / "vae" / "model.safetensors").is_file()


def test_nuwa_trainer_on_captioned_gifs_trains_samples_and_resumes(make_nuwa, gif_folder, tmp_path):
    kwargs = dict(
        folder=gif_folder,
        num_frames=2,
        batch_size=2,
        num_train_steps=2,
        save_results_every=2,
        save_model_every=2,
        sample_texts=["a red square moving left"],
        sample_num_frames=1,
        results_folder=tmp_path,
        ema_update_every=1,
        seed=0,
    )
    nuwa = make_nuwa()
    vae_state = {k: v.clone() for k, v in nuwa.vae.state_dict().items()}
    trainer = NUWATrainer(nuwa, **kwargs)
    assert trainer.tokenizer.encode(["a red square"], max_length=6).min() > 1  # the captions are in the vocabulary
    logs = []
    trainer.train(log_fn=logs.append)
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(row["loss"])) for row in logs)
    for key, value in nuwa.vae.state_dict().items():
        torch.testing.assert_close(value, vae_state[key], msg=f"the VAE was trained: {key}")
    assert (tmp_path / "samples" / "sample-00000002.gif").is_file()
    loaded = NUWA.from_pretrained(tmp_path / "nuwa")
    assert WordTokenizer.load(tmp_path / "nuwa").vocab == trainer.tokenizer.vocab
    assert loaded.max_video_frames == nuwa.max_video_frames

    resumed = NUWATrainer(make_nuwa(), resume="latest", **{**kwargs, "num_train_steps": 3})
    assert resumed.step_count == 2
    resumed.train()
    assert resumed.step_count == 3


def test_nuwa_trainer_on_pre_tokenised_videos(make_nuwa, tmp_path):
    nuwa = make_nuwa()
    items = [(torch.randint(0, 32, (2, 4, 4)), torch.tensor([3, 4, 5])) for _ in range(4)]
    trainer = NUWATrainer(
        nuwa,
        dataset=_Items(items),
        batch_size=2,
        num_train_steps=1,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path,
        seed=0,
    )
    assert trainer.tokenizer is None
    trainer.train()
    assert trainer.step_count == 1


def test_fit_runs_the_periodic_samples_and_checkpoints_of_train(make_nuwa, make_vae, gif_folder, tmp_path):
    """fit() (not only train()) writes the samples and numbered checkpoints at their periods, for NUWATrainer and
    VQGanVAETrainer alike; save_pretrained() publishes NUWA with the tokenizer its captions were encoded with."""
    trainer = NUWATrainer(
        make_nuwa(),
        folder=gif_folder,
        num_frames=2,
        batch_size=2,
        num_train_steps=2,
        save_results_every=1,
        save_model_every=2,
        sample_texts=CAPTIONS[:1],
        results_folder=tmp_path,
        seed=0,
    )
    assert trainer.fit() == 2
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["sample-00000001.gif", "sample-00000002.gif"]
    assert [step for step, _ in trainer.checkpoints.list()] == [2]
    published = trainer.save_pretrained(tmp_path / "published")
    assert WordTokenizer.load(published).vocab == trainer.tokenizer.vocab
    assert NUWA.from_pretrained(published).text_num_tokens == trainer.model_for_sampling().text_num_tokens

    vae_folder = tmp_path / "vae"
    vae_trainer = VQGanVAETrainer(
        make_vae(),
        dataset=_Items(list(moving_squares(num_videos=4))),
        batch_size=2,
        num_train_steps=2,
        save_results_every=2,
        save_model_every=1,
        results_folder=vae_folder,
        seed=0,
    )
    assert vae_trainer.fit() == 2
    assert [p.name for p in (vae_folder / "samples").iterdir()] == ["recon-00000002.png"]
    assert [step for step, _ in vae_trainer.checkpoints.list()] == [1, 2]
