"""CViViTTrainer and PhenakiTrainer on tiny synthetic data: they train, write samples, save and resume (the command
line: test_cli.py)."""

import torch
from torch.utils.data import Dataset

from phenaki_pytorch import CViViT, CViViTTrainer, Phenaki, PhenakiTrainer


class _Videos(Dataset):
    def __init__(self, videos, captions=None, text_embeds=None):
        self.videos, self.captions, self.text_embeds = videos, captions, text_embeds

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, index):
        if self.captions is not None:
            return self.videos[index], self.captions[index]
        if self.text_embeds is not None:
            return self.videos[index], self.text_embeds[index], torch.ones(self.text_embeds.shape[1], dtype=torch.bool)
        return self.videos[index]


def test_cvivit_trainer_with_gan_trains_saves_and_resumes(make_cvivit, moving_squares, tmp_path):
    cvivit = make_cvivit(use_vgg_and_gan=True, discr_base_dim=8, discr_layers=3, patch_size=4)
    dataset = _Videos(moving_squares(num_videos=4))
    kwargs = dict(
        dataset=dataset,
        batch_size=2,
        num_train_steps=4,
        apply_grad_penalty_every=2,
        save_results_every=2,
        save_model_every=4,
        results_folder=tmp_path,
        num_sample_videos=2,
        ema_update_every=1,
        seed=0,
    )
    trainer = CViViTTrainer(cvivit, **kwargs)
    # the generator's optimizer does not hold the discriminator, the discriminator's one holds only it
    generator_params = {id(p) for group in trainer.optimizers["cvivit"].param_groups for p in group["params"]}
    assert not generator_params & {id(p) for p in cvivit.discr.parameters()}
    discr_before = [p.detach().clone() for p in cvivit.discr.parameters()]
    logs = []
    trainer.train(log_fn=logs.append)
    assert len(logs) == 4 and all(torch.isfinite(torch.tensor(list(row.values()))).all() for row in logs)
    assert {"loss", "recon", "quantizer", "generator", "discr_loss"} <= set(logs[0])
    assert any(not torch.equal(a, b) for a, b in zip(discr_before, cvivit.discr.parameters()))
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["recon-00000002.gif", "recon-00000004.gif"]
    assert (tmp_path / "cvivit" / "config.json").is_file()
    loaded = CViViT.from_pretrained(tmp_path / "cvivit")
    assert loaded.codebook_size == cvivit.codebook_size

    # resume: a new trainer continues from the latest checkpoint
    resumed = CViViTTrainer(
        make_cvivit(use_vgg_and_gan=True, discr_base_dim=8, discr_layers=3, patch_size=4),
        resume="latest",
        **{**kwargs, "num_train_steps": 5},
    )
    assert resumed.step_count == 4 and resumed.step_counts["discr"] == 4
    resumed.train()
    assert resumed.step_count == 5


def test_cvivit_trainer_without_gan_lowers_the_reconstruction_loss(make_cvivit, moving_squares, tmp_path):
    cvivit = make_cvivit(patch_size=4, quantizer_kwargs=dict(kmeans_init=True))
    trainer = CViViTTrainer(
        cvivit,
        dataset=_Videos(moving_squares(num_videos=4)),
        batch_size=4,
        lr=2e-3,
        num_train_steps=25,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path,
        seed=0,
    )
    assert "discr" not in trainer.models
    logs = []
    trainer.train(log_fn=logs.append)
    assert logs[-1]["recon"] < 0.3 * logs[0]["recon"]


def test_phenaki_trainer_with_captions_or_pretokenised_videos(
    make_cvivit, make_maskgit, simple_text_encoder, moving_squares, tmp_path
):
    phenaki = Phenaki(make_cvivit(), make_maskgit(), text_encoder=simple_text_encoder, steps=2)
    captions = ["a red square moving left", "a blue circle moving right"] * 2
    trainer = PhenakiTrainer(
        phenaki,
        dataset=_Videos(moving_squares(num_videos=4), captions=captions),
        batch_size=2,
        num_train_steps=3,
        save_results_every=3,
        save_model_every=3,
        sample_texts=["a red square"],
        sample_num_frames=3,
        results_folder=tmp_path,
        seed=0,
    )
    trainer.train()
    assert (tmp_path / "samples" / "sample-00000003.gif").is_file()
    assert (tmp_path / "phenaki" / "model.safetensors").is_file()
    assert Phenaki.from_pretrained(tmp_path / "phenaki").sample(text="a red", num_frames=3).shape == (1, 3, 3, 16, 16)

    # pre-tokenised videos with pre-encoded text: the tokenizer is not run at all
    phenaki = Phenaki(make_cvivit(), make_maskgit(), text_encoder_name=None)
    ids = torch.randint(0, 64, (4, 3, 2, 2))
    calls = []
    phenaki.cvivit.register_forward_hook(lambda *args: calls.append(1))
    trainer = PhenakiTrainer(
        phenaki,
        dataset=_Videos(ids, text_embeds=torch.randn(4, 3, 16)),
        batch_size=2,
        num_train_steps=2,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path / "pretokenised",
    )
    trainer.train()
    assert trainer.step_count == 2 and not calls


def test_trainers_read_a_folder_of_captioned_gifs(
    make_cvivit, make_maskgit, simple_text_encoder, moving_squares, tmp_path
):
    from synthesis_core.video import save_video

    folder = tmp_path / "videos"
    folder.mkdir()
    captions = ["a red square moving left", "a blue circle moving right", "a green triangle moving up"]
    for i, (video, caption) in enumerate(zip(moving_squares(num_videos=3), captions)):
        save_video(video, folder / f"{i}.gif")
        (folder / f"{i}.txt").write_text(caption)

    cvivit = make_cvivit()
    tokenizer_trainer = CViViTTrainer(
        cvivit,
        folder=folder,
        num_frames=5,
        batch_size=2,
        num_train_steps=1,
        save_results_every=1,
        save_model_every=None,
        results_folder=tmp_path / "tok",
    )
    tokenizer_trainer.train()
    assert (tmp_path / "tok" / "samples" / "recon-00000001.gif").is_file()

    phenaki = Phenaki(cvivit, make_maskgit(), text_encoder=simple_text_encoder)
    trainer = PhenakiTrainer(
        phenaki,
        folder=folder,
        num_frames=5,
        batch_size=2,
        num_train_steps=1,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path / "phe",
    )
    assert trainer.dataset[0][1] == captions[0]
    trainer.train()
    assert trainer.step_count == 1


def test_fit_runs_the_periodic_samples_and_checkpoints_of_train(
    make_cvivit, make_maskgit, simple_text_encoder, moving_squares, tmp_path
):
    """fit() (not only train()) writes the samples and numbered checkpoints at their periods, for PhenakiTrainer and
    the tokenizer trainer alike; train() is fit() plus the final export."""
    phenaki = Phenaki(make_cvivit(), make_maskgit(), text_encoder=simple_text_encoder, steps=2)
    trainer = PhenakiTrainer(
        phenaki,
        dataset=_Videos(moving_squares(num_videos=4), captions=["a red square"] * 4),
        batch_size=2,
        num_train_steps=2,
        save_results_every=1,
        save_model_every=2,
        sample_texts=["a red square"],
        sample_num_frames=3,
        results_folder=tmp_path,
        seed=0,
    )
    assert trainer.fit() == 2
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["sample-00000001.gif", "sample-00000002.gif"]
    assert [step for step, _ in trainer.checkpoints.list()] == [2]

    cvivit_folder = tmp_path / "cvivit"
    cvivit_trainer = CViViTTrainer(
        make_cvivit(patch_size=4),
        dataset=_Videos(moving_squares(num_videos=4)),
        batch_size=2,
        num_train_steps=2,
        save_results_every=2,
        save_model_every=1,
        num_sample_videos=1,
        results_folder=cvivit_folder,
        seed=0,
    )
    assert cvivit_trainer.fit() == 2
    assert [p.name for p in (cvivit_folder / "samples").iterdir()] == ["recon-00000002.gif"]
    assert [step for step, _ in cvivit_trainer.checkpoints.list()] == [1, 2]
