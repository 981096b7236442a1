"""The demo (tools/demo.py) end to end in its tiny --smoke configuration, and the pieces it is made of."""

import dataclasses
import importlib.util
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import demo  # noqa: E402 (tools/ is on sys.path, see conftest.py)
import pytest  # noqa: E402
import torch  # noqa: E402
from einops import rearrange  # noqa: E402

from synthesis_core.shapes import COLORS, SHAPES, all_captions, caption_attributes  # noqa: E402
from synthesis_core.video import read_image, read_video  # noqa: E402

torch.set_num_threads(1)


def test_smoke_run_writes_gifs_contact_sheet_and_score(tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--smoke", "--quiet", "--out", str(out), "--seed", "1"]) == 0

    config = demo.make_config(demo.DEFAULT_MODEL, smoke=True)
    gifs = sorted(out.glob("*.gif"))
    assert len(gifs) == config.gifs
    prompts = demo.demo_prompts(config.num_samples)
    assert gifs[0].name == f"00-{demo.slug(prompts[0])}.gif"

    # frames are enlarged (nearest neighbour) to at least 64 px so that they can be seen
    scale = -(-64 // config.image_size)
    video = read_video(gifs[0])
    assert video.shape == (3, config.num_frames, config.image_size * scale, config.image_size * scale)

    # contact sheet: one row per prompt, its frames left to right, a white label column on the left
    sheet = read_image(out / "samples.png")
    assert sheet.shape[1] == config.gifs * config.image_size * scale
    label_width = sheet.shape[2] - config.num_frames * config.image_size * scale
    assert label_width > 0
    assert torch.allclose(sheet[:, :, 0], torch.ones(3, sheet.shape[1]))  # the label column is white paper
    first_row = sheet[:, : config.image_size * scale, label_width:]
    assert torch.allclose(first_row, rearrange(video, "c t h w -> c h (t w)"), atol=1.5 / 255)  # the first gif

    result = json.loads((out / "score.json").read_text())
    assert result["model"] == demo.DEFAULT_MODEL
    assert result["steps"] == config.max_steps
    assert result["prompts"] == prompts
    for key in ("color", "shape", "direction", "all"):
        assert 0.0 <= result["score"][key] <= 1.0
    assert result["score"]["n"] == config.num_samples
    assert "random pictures would match" in result["meaning"]
    assert len(result["measured"]) == config.num_samples


def test_prompts_show_every_colour_and_shape_first_and_cover_every_caption():
    prompts = demo.demo_prompts(48)
    assert sorted(prompts) == sorted(all_captions())  # 48 prompts: every caption exactly once
    first = [caption_attributes(p) for p in prompts[:12]]
    assert {(a["color"], a["shape"]) for a in first} == {(c, s) for c in COLORS for s in SHAPES}
    assert {a["direction"] for a in first} == {"left", "right", "up", "down"}


@pytest.mark.parametrize("model", ["video-diffusion", "imagen", "make-a-video", "phenaki"])
def test_caption_encoder_trains_jointly_with_the_model(model):
    # generator steps must move the small text encoder: the conditioning is learned with the model (several
    # steps, since zero-initialised output layers pass no gradient to the text on the very first one)
    pytest.importorskip(demo.PRESETS[model].package)
    config = demo.make_config(model, smoke=True, tokenizer_fraction=0.0, max_steps=3)
    torch.manual_seed(0)
    net = demo.build_model(model, config)
    before = {name: p.detach().clone() for name, p in net.text.named_parameters()}
    trainer = demo.DemoTrainer(net, config, budget=3600, device=torch.device("cpu"), seed=0)
    trainer.run(progress_bar=False)
    assert trainer.steps == 3 and trainer.stage in ("train", "generator")
    moved = [name for name, p in net.text.named_parameters() if not torch.equal(before[name], p)]
    assert "trained.token_emb.weight" in moved


def test_two_stage_model_trains_tokenizer_then_generator_with_a_fresh_optimizer():
    pytest.importorskip("phenaki_pytorch")
    config = demo.make_config("phenaki", smoke=True, max_steps=4, tokenizer_fraction=0.5)
    net = demo.build_model("phenaki", config)
    trainer = demo.DemoTrainer(net, config, budget=3600, device=torch.device("cpu"), seed=0)
    trainer.run(until=0.5, progress_bar=False)
    assert trainer.stage == "tokenizer" and net.video_model is None
    tokenizer_weights = {n: p.detach().clone() for n, p in net.tokenizer.named_parameters()}
    trainer.run(progress_bar=False)
    assert trainer.stage == "generator" and net.video_model is not None and trainer.steps == 4
    assert net.video_model.cvivit is net.tokenizer  # the model is built on the trained tokenizer
    # the generator stage leaves the (now frozen) tokenizer alone and only optimises what requires grad
    assert all(torch.equal(tokenizer_weights[n], p) for n, p in net.tokenizer.named_parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in net.tokenizer.parameters()}
    net.train()
    assert net.video_model.training and not net.tokenizer.training  # a frozen tokenizer stays in eval mode


@pytest.mark.parametrize("model", demo.MODELS)
def test_every_model_trains_and_samples_through_the_protocol(model):
    # no per-model code: the preset builds it, then `model(videos, ...)` trains it and `model.sample(...)` samples
    # it, reproducibly from the seed, without touching the global random state that training draws from
    pytest.importorskip(demo.PRESETS[model].package)
    config = demo.make_config(model, smoke=True, tokenizer_fraction=0.5)
    torch.manual_seed(0)
    net = demo.build_model(model, config)
    trainer = demo.DemoTrainer(net, config, budget=3600, device=torch.device("cpu"), seed=0).run(progress_bar=False)
    assert trainer.steps == config.max_steps and all(map(math.isfinite, trainer.losses))
    prompts = demo.demo_prompts(3)
    rng = torch.get_rng_state()
    videos = demo.generate(net, prompts, 2, torch.device("cpu"), seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert videos.shape == (3, 3, config.num_frames, config.image_size, config.image_size)
    assert videos.min() >= 0 and videos.max() <= 1
    assert torch.equal(demo.generate(net, prompts, 2, torch.device("cpu"), seed=3), videos)
    assert not torch.equal(demo.generate(net, prompts, 2, torch.device("cpu"), seed=4), videos)


def test_video_diffusion_is_conditioned_on_the_mean_caption_embedding():
    # the demo passes token embeddings and their mask; the model pools them: the same loss as the pooled vector
    config = demo.make_config("video-diffusion", smoke=True)
    net = demo.build_model("video-diffusion", config).train()
    captions = ["a red circle", "a blue square moving up"]
    videos = torch.rand(2, 3, config.num_frames, config.image_size, config.image_size)
    embeds, mask = net.text(captions)
    assert not mask.all()  # captions of different lengths: the mask matters
    pooled = torch.stack([embeds[i][mask[i]].mean(0) for i in range(2)])
    torch.manual_seed(5)
    through_demo = net.loss(videos, captions)
    torch.manual_seed(5)
    torch.testing.assert_close(through_demo, net.video_model(videos, cond=pooled))


def test_training_stops_when_the_time_budget_is_spent():
    # no step cap: only the (tiny) time budget can end training
    config = dataclasses.replace(demo.make_config(demo.DEFAULT_MODEL, smoke=True), max_steps=None)
    net = demo.build_model(demo.DEFAULT_MODEL, config)
    trainer = demo.DemoTrainer(net, config, budget=0.5, device=torch.device("cpu"), seed=0)
    trainer.run(progress_bar=False)
    assert trainer.steps >= 1 and trainer.train_seconds >= 0.5 and trainer.progress() >= 1


def test_missing_package_is_one_clear_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "nuwa_pytorch", None)  # makes `import nuwa_pytorch` fail
    with caplog.at_level("ERROR"):
        assert demo.main(["--smoke", "--quiet", "--model", "nuwa", "--out", str(tmp_path)]) == 2
    assert "nuwa-pytorch" in caplog.text and "pick another --model" in caplog.text
    assert not list(tmp_path.iterdir())


def test_bad_settings_are_reported_by_name(tmp_path):
    with pytest.raises(demo.DemoError, match="--frames"):
        demo.build_model("phenaki", demo.make_config("phenaki", smoke=True, num_frames=4))
    # a model that reads token ids has its own text encoder: a frozen one is refused before anything is loaded
    with pytest.raises(demo.DemoError, match="--text-encoder: --model nuwa"):
        demo.build_model("nuwa", demo.make_config("nuwa", smoke=True), text_encoder=str(tmp_path))
    if importlib.util.find_spec("transformers") is not None:
        with pytest.raises(demo.DemoError, match="--text-encoder: .*not found"):
            demo.build_model(
                demo.DEFAULT_MODEL,
                demo.make_config(demo.DEFAULT_MODEL, smoke=True),
                text_encoder=str(tmp_path / "missing"),
            )
    if not torch.cuda.is_available():
        with pytest.raises(demo.DemoError, match="--device cuda"):
            demo.pick_device("cuda")
    with pytest.raises(SystemExit):
        demo.parse_args(["--model", "dalle"])


def test_frozen_text_encoder_from_a_local_folder(tmp_path):
    # --text-encoder PATH: a T5 on disk (tiny and random here) conditions the model instead of the trained encoder
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.train_from_iterator(
        all_captions() * 4,
        trainers.UnigramTrainer(vocab_size=40, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    folder = tmp_path / "t5"
    tok = T5TokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0
    )
    tok.save_pretrained(folder)
    T5EncoderModel(
        T5Config(vocab_size=len(tok), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2)
    ).save_pretrained(folder)

    out = tmp_path / "demo"
    assert demo.main(["--smoke", "--quiet", "--text-encoder", str(folder), "--out", str(out)]) == 0
    result = json.loads((out / "score.json").read_text())
    assert result["text_encoder"] == str(folder)
    config = demo.make_config(demo.DEFAULT_MODEL, smoke=True)
    net = demo.build_model(demo.DEFAULT_MODEL, config, text_encoder=str(folder))
    assert net.text.dim == 16 and net.text.trained is None
    assert not [name for name, _ in net.named_parameters() if name.startswith("text.")]  # frozen, not trained


def test_threads_are_lowered_on_a_busy_machine(monkeypatch):
    monkeypatch.setattr(demo.torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (0.3, 0.0, 0.0))
    assert demo.pick_threads() == 4  # an idle machine: torch's default
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert demo.pick_threads() == 2  # two cores kept busy by others
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert demo.pick_threads() == 1
    assert demo.pick_threads(3) == 3  # --threads wins
