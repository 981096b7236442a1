"""The phenaki-pytorch 0.5 names: CViViT(lookup_free_quantization=..., discr_attn_res_layers=...), CViViT.load,
copy_for_eval, Phenaki(t5_name=..., max_text_len=..., sample_temperature=..., self_token_critic=...),
Phenaki.sample_images, TokenCritic(has_cross_attn=...), MaskGit(gradient_shrink_alpha=...), trainer spellings,
and the perceptual loss over any feature module."""

import inspect
import logging

import pytest
import torch
from torch import nn

from phenaki_pytorch import CViViT, CViViTTrainer, MaskGit, Phenaki, TokenCritic
from synthesis_core.quantize import LFQ


def test_lookup_free_quantization_spelling(make_cvivit):
    cvivit = make_cvivit(
        codebook_size=16, lookup_free_quantization=True, lookup_free_quantization_kwargs={"entropy_loss_weight": 0.0}
    )
    assert isinstance(cvivit.vq, LFQ) and cvivit.codebook_size == 16
    video = torch.rand(1, 3, 3, 16, 16)
    ids = cvivit(video, return_only_codebook_ids=True)
    assert ids.max() < 16
    assert isinstance(make_cvivit(lookup_free_quantization=False).vq, type(make_cvivit().vq))
    with pytest.raises(ValueError, match="lookup_free_quantization=True contradicts quantizer='fsq'"):
        make_cvivit(lookup_free_quantization=True, quantizer="fsq")
    with pytest.raises(ValueError, match="lookup_free_quantization_kwargs: only used with"):
        make_cvivit(lookup_free_quantization_kwargs={})
    with pytest.raises(ValueError, match="discr_attn_res_layers=\\(16,\\): the discriminator here has no attention"):
        make_cvivit(discr_attn_res_layers=(16,))
    assert make_cvivit(discr_attn_res_layers=()).discr is None  # asking for no attention is what we do


def test_load_in_place_from_a_folder_a_safetensors_file_or_a_torch_state_dict(make_cvivit, tmp_path):
    source = make_cvivit().eval()
    video = torch.rand(1, 3, 3, 16, 16)
    expected = source(video, return_recons_only=True)
    source.save_pretrained(tmp_path / "folder")
    torch.save(source.state_dict(), tmp_path / "vae.pt")
    for path in (tmp_path / "folder", tmp_path / "folder" / "model.safetensors", tmp_path / "vae.pt"):
        target = make_cvivit().eval()
        assert target.load(path) is target
        torch.testing.assert_close(target(video, return_recons_only=True), expected)
    with pytest.raises(FileNotFoundError, match="no CViViT weights"):
        make_cvivit().load(tmp_path / "missing.pt")
    torch.save({"code": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing|unexpected|state"):
        make_cvivit().load(tmp_path / "bad.pt")


def test_copy_for_eval_is_frozen_and_shares_the_perceptual_network(make_cvivit):
    cvivit = make_cvivit(use_vgg_and_gan=True, discr_base_dim=8, discr_layers=2, vgg=nn.Sequential(nn.Conv2d(3, 4, 3)))
    frozen = cvivit.copy_for_eval()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert cvivit.training and all(p.requires_grad for p in cvivit.parameters())
    assert frozen.perceptual_loss is cvivit.perceptual_loss
    video = torch.rand(1, 3, 3, 16, 16)
    torch.testing.assert_close(frozen(video, return_recons_only=True), cvivit.eval()(video, return_recons_only=True))


def test_perceptual_loss_over_a_plain_conv_stack_changes_the_loss(make_cvivit):
    conv_stack = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GELU(), nn.Conv2d(6, 6, 3, padding=1))
    cvivit = make_cvivit(use_vgg_and_gan=True, discr_base_dim=8, discr_layers=2, vgg=conv_stack).eval()
    video = torch.rand(2, 3, 3, 16, 16)
    with torch.no_grad():
        torch.manual_seed(0)
        loss, breakdown = cvivit(video, return_loss_breakdown=True)
        assert breakdown.perceptual > 0
        cvivit.perceptual_loss_weight = 3.0
        torch.manual_seed(0)  # the same random frame per video
        heavier, again = cvivit(video, return_loss_breakdown=True)
    torch.testing.assert_close(again.perceptual, breakdown.perceptual)
    torch.testing.assert_close(heavier - loss, 2.0 * breakdown.perceptual, rtol=1e-4, atol=1e-5)


def test_without_cached_vgg_cvivit_trains_after_one_warning(make_cvivit, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cvivit = make_cvivit(use_vgg_and_gan=True, discr_base_dim=8, discr_layers=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            loss, breakdown = cvivit(torch.rand(1, 3, 3, 16, 16), return_loss_breakdown=True)
            loss.backward()
    warnings = [r.getMessage() for r in caplog.records if "perceptual loss" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("CViViT:") and "vgg=" in warnings[0]
    assert breakdown.perceptual == 0


def test_phenaki_published_keywords(make_cvivit, make_maskgit):
    model = Phenaki(
        cvivit=make_cvivit(),
        maskgit=make_maskgit(dim_context=512),
        t5_name="google/t5-v1_1-small",
        max_text_len=32,
        self_token_critic=True,
        sample_temperature=0.0,
    )
    assert model.text_encoder.name == "google/t5-v1_1-small" and model.text_encoder.max_length == 32
    assert model.critic is not None and type(model.critic).__name__ == "SelfCritic"
    with pytest.raises(ValueError, match="t5_name: an alias of text_encoder_name"):
        Phenaki(cvivit=make_cvivit(), maskgit=make_maskgit(), t5_name="a", text_encoder_name="b")
    with pytest.raises(ValueError, match="self_token_critic=False contradicts self_critic=True"):
        Phenaki(
            cvivit=make_cvivit(),
            maskgit=make_maskgit(),
            text_encoder_name=None,
            text_embed_dim=16,
            self_critic=True,
            self_token_critic=False,
        )


def test_sample_temperature_is_the_default_starting_temperature_and_sample_images(make_cvivit, make_maskgit):
    model = Phenaki(
        cvivit=make_cvivit(),
        maskgit=make_maskgit(),
        text_encoder_name=None,
        text_embed_dim=16,
        steps=3,
        sample_temperature=0.0,
    )
    embeds = torch.randn(2, 4, 16)
    # temperature 0: greedy, so two runs agree without a generator, and equal an explicit starting_temperature=0
    first = model.sample(text_embeds=embeds, num_frames=3, return_codebook_ids=True, progress=False)[1]
    second = model.sample(
        text_embeds=embeds, num_frames=3, starting_temperature=0.0, return_codebook_ids=True, progress=False
    )[1]
    assert torch.equal(first, second)
    images, grid = model.sample_images(text_embeds=embeds, return_codebook_ids=True, progress=False)
    assert images.shape == (2, 3, 16, 16) and grid.shape[1] == 1 and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, model.cvivit.decode_from_codebook_indices(grid)[:, :, 0])
    with pytest.raises(ValueError, match="sample_images: samples single images"):
        model.sample_images(text_embeds=embeds, num_frames=3)


def test_token_critic_has_cross_attn_spelling():
    common = dict(num_tokens=64, max_seq_len=64, dim=32, depth=1, dim_context=16, heads=2, dim_head=8)
    assert TokenCritic(has_cross_attn=False, **common).unconditional
    conditional = TokenCritic(has_cross_attn=True, **common)
    assert not conditional.unconditional and conditional.dim_context == 16
    with pytest.raises(ValueError, match="has_cross_attn=True contradicts unconditional=True"):
        TokenCritic(has_cross_attn=True, unconditional=True, **common)


def test_gradient_shrink_alpha_scales_the_embedding_gradient_only(make_maskgit):
    ids = torch.randint(0, 64, (2, 12))
    grads = {}
    for alpha in (1.0, 0.25):
        torch.manual_seed(0)
        maskgit = make_maskgit(gradient_shrink_alpha=alpha, unconditional=True)
        logits = maskgit(ids)
        logits.square().mean().backward()
        grads[alpha] = (logits.detach(), maskgit.token_emb.weight.grad.clone(), maskgit.to_logits.weight.grad.clone())
    torch.testing.assert_close(grads[0.25][0], grads[1.0][0])  # same forward
    torch.testing.assert_close(grads[0.25][1], 0.25 * grads[1.0][1])  # a quarter of the gradient reaches it
    torch.testing.assert_close(grads[0.25][2], grads[1.0][2])
    with pytest.raises(ValueError, match="gradient_shrink_alpha"):
        make_maskgit(gradient_shrink_alpha=2.0)
    assert isinstance(make_maskgit(gradient_shrink_alpha=0.1), MaskGit)


def test_cvivit_trainer_published_spellings(make_cvivit, moving_squares, tmp_path):
    videos = list(moving_squares(5, num_frames=3))
    trainer = CViViTTrainer(
        vae=make_cvivit(),
        dataset=videos,
        batch_size=2,
        num_train_steps=2,
        wd=0.05,
        ema_beta=0.8,
        valid_frac=0.2,
        num_sample_videos=1,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path,
        cpu=True,
    )
    assert trainer.optimizers["cvivit"].param_groups[0]["weight_decay"] == 0.05 and trainer.ema("cvivit").beta == 0.8
    assert len(trainer.dataset) == 4 and len(trainer.valid_dataset) == 1
    assert set(trainer.train_step()) >= {"loss", "recon"}
    assert trainer.save_results().suffix == ".gif"
    with pytest.raises(ValueError, match="vae: an alias of cvivit"):
        CViViTTrainer(make_cvivit(), vae=make_cvivit(), dataset=videos, results_folder=tmp_path, cpu=True)
    with pytest.raises(ValueError, match="train_on_images: reads a folder"):
        CViViTTrainer(make_cvivit(), dataset=videos, train_on_images=True, results_folder=tmp_path, cpu=True)


def test_cvivit_trainer_on_a_folder_of_images(make_cvivit, tmp_path):
    from synthesis_core.video import save_image

    folder = tmp_path / "images"
    for index in range(4):
        save_image(torch.rand(3, 16, 16), folder / f"{index}.png")
    trainer = CViViTTrainer(
        make_cvivit(),
        folder=folder,
        train_on_images=True,
        batch_size=2,
        num_train_steps=1,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path / "r",
        cpu=True,
    )
    batch = trainer.next_batch()
    assert batch.shape == (2, 3, 1, 16, 16)  # images are one-frame videos
    assert torch.isfinite(torch.tensor(trainer.train_step()["loss"]))


def test_cvivit_class_is_exported():
    assert CViViT.__name__ == "CViViT"


def test_phenaki_trainer_published_spellings(make_cvivit, make_maskgit, moving_squares, tmp_path):
    from phenaki_pytorch import PhenakiTrainer

    model = Phenaki(cvivit=make_cvivit(), maskgit=make_maskgit(), text_encoder_name=None, text_embed_dim=16, steps=2)
    items = [(video, torch.randn(4, 16), torch.ones(4, dtype=torch.bool)) for video in moving_squares(4, 3)]
    trainer = PhenakiTrainer(
        model,
        dataset=items,
        num_frames=3,
        batch_size=2,
        train_lr=1e-3,
        train_num_steps=7,
        wd=0.01,
        save_and_sample_every=5,
        results_folder=tmp_path,
        cpu=True,
    )
    optimizer = trainer.optimizers["phenaki"].param_groups[0]
    assert optimizer["weight_decay"] == 0.01 and trainer.num_train_steps == 7
    assert trainer.save_results_every == 5 and trainer.save_model_every == 5
    assert trainer.get_lr("phenaki") <= 1e-3 and optimizer["initial_lr"] == 1e-3
    with pytest.raises(ValueError, match="train_lr: an alias of lr"):
        PhenakiTrainer(model, dataset=items, lr=1e-2, train_lr=1e-3, results_folder=tmp_path, cpu=True)
    with pytest.raises(ValueError, match="train_on_images"):
        PhenakiTrainer(model, dataset=items, train_on_images=True, results_folder=tmp_path, cpu=True)


# phenaki-pytorch 0.5 sizes, variable-length videos, encode(tokens=), trainer keywords


def test_cvivit_size_helpers_agree_with_the_tokenizer(make_cvivit):
    cvivit = make_cvivit().eval()
    assert cvivit.patch_height_width == (2, 2) and cvivit.image_num_tokens == 4
    assert cvivit.get_video_patch_shape(5) == (3, 2, 2) and cvivit.get_video_patch_shape(4, False) == (2, 2, 2)
    ids = cvivit(torch.rand(1, 3, 5, 16, 16), return_only_codebook_ids=True)
    assert tuple(ids.shape[1:]) == cvivit.get_video_patch_shape(5)
    for frames in (1, 3, 5, 7):
        assert cvivit.frames_per_num_tokens(cvivit.num_tokens_per_frames(frames)) == frames
    with pytest.raises(ValueError, match="num_tokens: expected a multiple of the 4 tokens of a frame"):
        cvivit.frames_per_num_tokens(6)
    with pytest.raises(ValueError, match="image_size: this CViViT was built without image_size"):
        _ = make_cvivit(image_size=None).image_num_tokens


def test_video_token_mask_marks_the_tokens_of_real_frames(make_cvivit, moving_squares):
    cvivit = make_cvivit()
    videos = moving_squares(2, num_frames=5)
    frame_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    token_mask = cvivit.calculate_video_token_mask(videos, frame_mask)
    assert token_mask.shape == (2, 12) and token_mask[0].all()
    assert token_mask[1].tolist() == [True] * 8 + [False] * 4  # token frames 0 and 1 (frames 0, 1-2) are real
    with pytest.raises(ValueError, match="real frames first, then padding"):
        cvivit.calculate_video_token_mask(videos, torch.tensor([[True] * 5, [True, False, True, True, True]]))
    with pytest.raises(ValueError, match="1 \\+ k \\* temporal_patch_size \\(2\\) real frames"):
        cvivit.calculate_video_token_mask(videos, torch.tensor([[True] * 5, [True, True, False, False, False]]))
    with pytest.raises(TypeError, match="video_frame_mask: expected a bool tensor"):
        cvivit.calculate_video_token_mask(videos, frame_mask.long())


def test_forward_mask_trains_on_the_real_frames_only(make_cvivit, moving_squares):
    cvivit = make_cvivit().eval()  # eval: the codebook does not move between the calls compared
    videos = moving_squares(2, num_frames=5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        # one padded video: the loss of its real frames, as if the padding were not there (causal in time)
        torch.testing.assert_close(cvivit(videos[1:], mask[1:]), cvivit(videos[1:, :, :3]))
        other_padding = videos.clone()
        other_padding[1, :, 3:] = torch.rand_like(other_padding[1, :, 3:])
        torch.testing.assert_close(cvivit(videos, mask=mask), cvivit(other_padding, mask=mask))
        assert not torch.allclose(cvivit(videos), cvivit(other_padding))
    # the GAN and perceptual terms pick their frame among the real ones: the padding changes nothing either
    gan = make_cvivit(
        use_vgg_and_gan=True, discr_base_dim=8, discr_layers=2, vgg=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    ).eval()
    losses = []
    for batch in (videos, other_padding):
        torch.manual_seed(3)
        losses.append(gan(batch, mask=mask).detach())
        torch.manual_seed(3)
        losses.append(gan(batch, mask=mask, return_discr_loss=True, apply_grad_penalty=False).detach())
    torch.testing.assert_close(losses[0], losses[2])
    torch.testing.assert_close(losses[1], losses[3])
    # training: only the real tokens reach the quantizer (k-means init, codebook updates)
    trained = make_cvivit().train()
    loss = trained(videos, mask)
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="mask: only for the training losses"):
        cvivit(videos, mask, return_only_codebook_ids=True)


def test_encode_tokens_is_the_encoder_before_quantization(make_cvivit, moving_squares):
    cvivit = make_cvivit().eval()
    videos = moving_squares(2, num_frames=3)
    encoded = cvivit.encode(videos)
    patch_tokens = cvivit._video_to_tokens(videos * 2 - 1)
    features = cvivit.encode(tokens=patch_tokens)
    assert features.shape == (2, 2, 2, 2, 32)
    indices = cvivit.vq(features.flatten(1, 3)).indices.view_as(encoded.indices)
    assert torch.equal(indices, encoded.indices)
    with pytest.raises(ValueError, match="video, tokens: pass exactly one"):
        cvivit.encode(videos, tokens=patch_tokens)
    with pytest.raises(ValueError, match="tokens: expected the last dimension to be dim=32"):
        cvivit.encode(tokens=patch_tokens[..., :8])


def test_trainers_share_the_process_helpers(make_cvivit, moving_squares, tmp_path, caplog):
    videos = list(moving_squares(2, num_frames=3))
    trainer = CViViTTrainer(
        make_cvivit(),
        dataset=videos,
        batch_size=2,
        num_train_steps=1,
        results_folder=tmp_path,
        accelerate_kwargs={"step_scheduler_with_optimizer": False},
        cpu=True,
    )
    assert trainer.accelerator.step_scheduler_with_optimizer is False
    assert trainer.is_distributed is False and trainer.is_local_main is True
    with caplog.at_level(logging.INFO, logger="phenaki_pytorch.trainer"):
        trainer.print("hello from the trainer")
    assert "hello from the trainer" in caplog.text


def make_phenaki_trainer(make_cvivit, make_maskgit, items, tmp_path, **kwargs):
    from phenaki_pytorch import PhenakiTrainer

    model = Phenaki(cvivit=make_cvivit(), maskgit=make_maskgit(), text_encoder_name=None, text_embed_dim=16, steps=2)
    settings = dict(
        dataset=items,
        num_frames=3,
        batch_size=2,
        num_train_steps=2,
        results_folder=tmp_path,
        cpu=True,
        save_results_every=None,
        save_model_every=None,
    )
    settings.update(kwargs)
    return PhenakiTrainer(model, **settings)


def test_phenaki_trainer_optimizer_precision_and_batch_keywords(make_cvivit, make_maskgit, moving_squares, tmp_path):
    items = [(video, torch.randn(4, 16), torch.ones(4, dtype=torch.bool)) for video in moving_squares(4, 3)]
    trainer = make_phenaki_trainer(
        make_cvivit, make_maskgit, items, tmp_path, adam_betas=(0.8, 0.95), split_batches=True
    )
    assert trainer.optimizers["phenaki"].param_groups[0]["betas"] == (0.8, 0.95)
    assert trainer.accelerator.split_batches is True and trainer.mixed_precision == "no"
    assert set(trainer.train_step()) >= {"loss"}
    with pytest.raises(ValueError, match="adam_betas: expected two numbers in \\[0, 1\\)"):
        make_phenaki_trainer(make_cvivit, make_maskgit, items, tmp_path, adam_betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="fp16=True asks for mixed_precision='fp16'"):
        make_phenaki_trainer(make_cvivit, make_maskgit, items, tmp_path, fp16=True, mixed_precision="no")
    with pytest.raises(ValueError, match="amp=True asks for mixed_precision='bf16'"):
        make_phenaki_trainer(make_cvivit, make_maskgit, items, tmp_path, amp=True, mixed_precision="no")


def test_phenaki_trainer_samples_num_samples_texts_from_a_file(make_cvivit, make_maskgit, moving_squares, tmp_path):
    from phenaki_pytorch import PhenakiTrainer

    captions = tmp_path / "captions.txt"
    captions.write_text("a red square\n\na blue circle\n", encoding="utf-8")
    model = Phenaki(cvivit=make_cvivit(), maskgit=make_maskgit(), text_encoder_name=None, text_embed_dim=16, steps=2)
    items = [(video, torch.randn(4, 16), torch.ones(4, dtype=torch.bool)) for video in moving_squares(4, 3)]
    trainer = PhenakiTrainer(
        model,
        dataset=items,
        num_frames=3,
        batch_size=2,
        num_samples=3,
        sample_texts_file_path=captions,
        results_folder=tmp_path / "r",
        cpu=True,
    )
    assert trainer.sample_texts == ["a red square", "a blue circle"]
    calls = []

    def fake_sample(texts=None, batch_size=None, **kwargs):
        calls.append(list(texts))
        return torch.rand(len(texts), 3, kwargs["num_frames"], 16, 16)

    trainer.model_for_sampling().sample = fake_sample
    assert trainer.save_results().is_file()
    assert calls == [["a red square", "a blue circle"], ["a red square"]]  # 3 samples, batch_size at a time
    with pytest.raises(ValueError, match="sample_texts_file_path: pass either it or sample_texts"):
        PhenakiTrainer(
            model,
            dataset=items,
            sample_texts=["x"],
            sample_texts_file_path=captions,
            results_folder=tmp_path / "r",
            cpu=True,
        )
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no caption"):
        PhenakiTrainer(
            model, dataset=items, sample_texts_file_path=tmp_path / "empty.txt", results_folder=tmp_path / "r", cpu=True
        )
    with pytest.raises(ValueError, match="num_samples"):
        PhenakiTrainer(model, dataset=items, num_samples=0, results_folder=tmp_path / "r", cpu=True)


def test_phenaki_trainer_convert_image_to_must_match_the_tokenizer(make_cvivit, make_maskgit, moving_squares, tmp_path):
    items = [(video, torch.randn(4, 16), torch.ones(4, dtype=torch.bool)) for video in moving_squares(2, 3)]
    with pytest.raises(ValueError, match="convert_image_to: converts the frames read from folder="):
        make_phenaki_trainer(make_cvivit, make_maskgit, items, tmp_path, convert_image_to="RGB")
    folder = tmp_path / "videos"
    folder.mkdir()
    with pytest.raises(ValueError, match="convert_image_to='L' gives 1 channels, but the C-ViViT takes 3"):
        make_phenaki_trainer(make_cvivit, make_maskgit, None, tmp_path, folder=folder, convert_image_to="L")
    with pytest.raises(ValueError, match="convert_image_to"):
        make_phenaki_trainer(make_cvivit, make_maskgit, None, tmp_path, folder=folder, convert_image_to="CMYK")


def test_dataset_fields_name_the_elements_of_the_items(make_cvivit, make_maskgit, moving_squares, tmp_path):
    from phenaki_pytorch.trainer import collate_videos_and_text

    videos = moving_squares(4, 3)
    embeds, masks = torch.randn(4, 4, 16), torch.ones(4, 4, dtype=torch.bool)
    reordered = [(embeds[i], masks[i], videos[i]) for i in range(4)]
    trainer = make_phenaki_trainer(
        make_cvivit, make_maskgit, reordered, tmp_path, dataset_fields=("text_embeds", "text_mask", "videos")
    )
    batch = next(trainer.dataloader)
    assert isinstance(batch, tuple) and len(batch) == 3
    kwargs = trainer.data_tuple_to_kwargs(batch)
    assert set(kwargs) == {"text_embeds", "text_mask", "videos"} and kwargs["videos"].shape == (2, 3, 3, 16, 16)
    # the same batch as the default (video, embeddings, mask) items give
    default = collate_videos_and_text([(videos[i], embeds[i], masks[i]) for i in range(4)])
    positions = [next(i for i in range(4) if torch.equal(videos[i], v)) for v in kwargs["videos"]]
    torch.testing.assert_close(kwargs["text_embeds"], default["text_embeds"][positions])
    assert torch.isfinite(torch.tensor(trainer.train_step()["loss"]))

    # without dataset_fields, a batch tuple is named from its types (and the names are kept)
    plain = make_phenaki_trainer(make_cvivit, make_maskgit, reordered[:2], tmp_path / "plain")
    named = plain.data_tuple_to_kwargs((videos[:2], embeds[:2], masks[:2]))
    assert list(named) == ["videos", "text_embeds", "text_mask"] and plain.dataset_fields == tuple(named)
    ids = torch.randint(0, 64, (2, 2, 2, 2))
    assert list(
        make_phenaki_trainer(make_cvivit, make_maskgit, reordered[:2], tmp_path / "ids").data_tuple_to_kwargs(
            (ids, ["a", "b"])
        )
    ) == ["video_codebook_ids", "texts"]

    with pytest.raises(ValueError, match="dataset_fields: 'captions' \\(not a field name\\)"):
        make_phenaki_trainer(make_cvivit, make_maskgit, reordered, tmp_path, dataset_fields=("videos", "captions"))
    with pytest.raises(ValueError, match="dataset_fields: names repeat"):
        make_phenaki_trainer(make_cvivit, make_maskgit, reordered, tmp_path, dataset_fields=("videos", "videos"))
    with pytest.raises(ValueError, match="exactly one of 'videos' or 'video_codebook_ids'"):
        make_phenaki_trainer(make_cvivit, make_maskgit, reordered, tmp_path, dataset_fields=("texts",))
    if "video_frame_mask" not in inspect.signature(Phenaki.forward).parameters:
        with pytest.raises(ValueError, match="'video_frame_mask' \\(Phenaki.forward here takes no such input\\)"):
            make_phenaki_trainer(
                make_cvivit, make_maskgit, reordered, tmp_path, dataset_fields=("videos", "video_frame_mask")
            )
