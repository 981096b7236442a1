"""The published imagen-pytorch 2.1 trainer API on ours: placement (.to / .cuda / .cpu), step counts, EMA access,
in-memory state dicts, checkpoint folders, text encoding, and the published trainer keywords - each checked by
what it does, not only that it exists."""

import logging
import math

import pytest
import torch
from torch.utils.data import DataLoader

from imagen_pytorch import Imagen, ImagenConfig, ImagenTrainer
from imagen_pytorch.trainer import _resolve_mixed_precision
from synthesis_core.checkpoint import CheckpointError

TEXT_DIM = 16


@pytest.fixture
def cascade(tiny_unet):
    def build(**kwargs):
        kwargs = dict(dict(image_sizes=(8, 16), text_embed_dim=TEXT_DIM, timesteps=10), **kwargs)
        return Imagen((tiny_unet(), tiny_unet()), **kwargs)

    return build


def batch(size=2):
    return torch.rand(size, 3, 16, 16), torch.randn(size, 4, TEXT_DIM)


def train(trainer, unet_numbers=(1,)):
    images, embeds = batch()
    for unet_number in unet_numbers:
        trainer(images, text_embeds=embeds, unet_number=unet_number)
        trainer.update(unet_number=unet_number)


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- placement ------------------------------------------------------------------------------------------------


def test_to_and_cpu_return_the_trainer_and_move_models_emas_and_optimizer_states(cascade):
    trainer = ImagenTrainer(cascade())
    train(trainer, (1, 2))
    assert trainer.cpu() is trainer and trainer.to("cpu") is trainer and trainer.to(torch.device("cpu")) is trainer
    train(trainer, (1,))  # still trains where it is
    assert trainer.num_steps_taken(1) == 2

    # the meta device shows that every piece moves: unets, EMA copies, optimizer moments (the step counters stay
    # on the CPU, where torch keeps them for a non-capturable AdamW)
    moved = trainer.to("meta")
    assert moved is trainer and trainer.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in trainer.imagen.parameters())
    for unet_number in (1, 2):
        assert all(p.device.type == "meta" for p in trainer.get_ema_unet(unet_number).parameters())
        optimizer = trainer.engine.optimizers[trainer.model_name(unet_number)]
        states = list(optimizer.state.values())
        assert states and all(
            s["exp_avg"].device.type == "meta" and s["exp_avg_sq"].device.type == "meta" for s in states
        )
        assert all(s["step"].device.type == "cpu" for s in states)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_raises_a_clear_error(cascade):
    trainer = ImagenTrainer(cascade())
    with pytest.raises(ValueError, match="CUDA is not available.*leave out .cuda"):
        trainer.cuda()
    with pytest.raises(ValueError, match="CUDA is not available"):
        trainer.to("cuda:0")
    assert trainer.device == torch.device("cpu")  # nothing moved
    with pytest.raises(TypeError, match="mixed_precision"):
        trainer.to(torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_moves_the_trainer_and_back(cascade):
    trainer = ImagenTrainer(cascade(), cpu=True).cuda()
    assert trainer.device.type == "cuda" and next(trainer.imagen.parameters()).is_cuda
    train(trainer, (1,))  # CPU batches are moved to the trainer's device
    before = weights(trainer.imagen)
    assert trainer.cpu().device.type == "cpu"
    assert all(torch.equal(before[k].cpu(), v) for k, v in trainer.imagen.state_dict().items())


# -- step counts, EMA, untrained unets ------------------------------------------------------------------------


def test_num_steps_taken_counts_the_optimizer_steps_of_each_unet(cascade, tiny_unet):
    trainer = ImagenTrainer(cascade())
    assert trainer.num_steps_taken(1) == trainer.num_steps_taken() == 0
    train(trainer, (1, 2, 1))
    assert (trainer.num_steps_taken(1), trainer.num_steps_taken(2), trainer.num_steps_taken()) == (2, 1, 3)
    with pytest.raises(ValueError, match="unet_number"):
        trainer.num_steps_taken(3)

    single = ImagenTrainer(Imagen(tiny_unet(), image_sizes=8, text_embed_dim=TEXT_DIM, timesteps=10))
    images, embeds = torch.rand(2, 3, 8, 8), torch.randn(2, 4, TEXT_DIM)
    for _ in range(3):
        single(images, text_embeds=embeds)
        single.update()
    assert single.num_steps_taken() == 3


def test_get_ema_unet_is_the_averaged_copy_that_sampling_uses(cascade):
    trainer = ImagenTrainer(cascade(), ema_update_after_step=0, ema_update_every=1, ema_decay=0.5)
    before = weights(trainer.get_ema_unet(1))
    train(trainer, (1, 1, 1))  # the first update copies the weights, the next ones average
    ema, online = trainer.get_ema_unet(1), trainer.unet_being_trained(1)
    assert ema is not online and ema is trainer.ema_unet(1)
    changed = [k for k, v in ema.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # it follows the trained weights...
    online_state = online.state_dict()
    assert any(not torch.equal(ema.state_dict()[k], online_state[k]) for k in changed)  # ...as an average
    with trainer.use_ema_unets():
        assert trainer.imagen.unets[0] is ema
    with pytest.raises(ValueError, match="use_ema=False"):
        ImagenTrainer(cascade(), use_ema=False).get_ema_unet(1)


def test_print_untrained_unets_warns_and_names_them(cascade, caplog):
    trainer = ImagenTrainer(cascade())
    train(trainer, (1,))
    with caplog.at_level(logging.WARNING, logger="imagen_pytorch.trainer"):
        assert trainer.print_untrained_unets() == [2]
    assert "unet(s) 2" in caplog.text and "stop_at_unet_number" in caplog.text
    assert trainer.print_untrained_unets(stop_at_unet_number=1) == []  # sampling that stops before unet 2

    caplog.clear()
    quiet = ImagenTrainer(cascade(), verbose=False)
    with caplog.at_level(logging.DEBUG, logger="imagen_pytorch.trainer"):
        assert quiet.print_untrained_unets() == [1, 2]
    assert "have not been trained" not in caplog.text
    with pytest.raises(TypeError, match="verbose"):
        ImagenTrainer(cascade(), verbose="yes")


def test_sample_use_non_ema_is_use_ema_false(cascade):
    trainer = ImagenTrainer(cascade(), ema_update_after_step=0, ema_update_every=1, ema_decay=0.9)
    train(trainer, (1, 1, 1))  # the first update copies the weights, the next ones average
    embeds = torch.randn(1, 4, TEXT_DIM)

    def sample(**kwargs):
        torch.manual_seed(3)
        return trainer.sample(text_embeds=embeds, steps=2, use_tqdm=False, stop_at_unet_number=1, **kwargs)

    assert torch.equal(sample(use_non_ema=True), sample(use_ema=False))
    assert not torch.equal(sample(use_non_ema=True), sample())


# -- in-memory state dicts ------------------------------------------------------------------------------------


def test_state_dict_round_trip_restores_exact_weights_emas_and_steps(cascade, tmp_path):
    from safetensors.torch import load_file, save_file

    trainer = ImagenTrainer(cascade(), ema_update_after_step=0, ema_update_every=1)
    train(trainer, (1, 2, 1))
    state = trainer.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    save_file(state, tmp_path / "trainer.safetensors")  # plain tensors: safetensors holds them, no pickle
    state = load_file(tmp_path / "trainer.safetensors")

    other = ImagenTrainer(cascade(), ema_update_after_step=0, ema_update_every=1)
    assert not all(torch.equal(a, b) for a, b in zip(trainer.imagen.parameters(), other.imagen.parameters()))
    other.load_state_dict(state)
    for (name, a), b in zip(trainer.imagen.state_dict().items(), other.imagen.state_dict().values()):
        assert torch.equal(a, b), name
    for unet_number in (1, 2):
        ema_a, ema_b = trainer.get_ema_unet(unet_number).state_dict(), other.get_ema_unet(unet_number).state_dict()
        assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert other.steps.tolist() == trainer.steps.tolist() == [2, 1]

    # the dict is a copy: training on does not change it
    snapshot = {k: v.clone() for k, v in state.items()}
    train(other, (1,))
    assert all(torch.equal(state[k], snapshot[k]) for k in state)


def test_load_state_dict_checks_everything_first_and_changes_nothing_on_error(cascade):
    trainer = ImagenTrainer(cascade())
    state = trainer.state_dict()
    target = ImagenTrainer(cascade())
    before = weights(target.imagen)

    broken = dict(state)
    key = next(k for k in broken if k.startswith("imagen.") and broken[k].ndim > 1)
    broken[key] = torch.zeros(1, 2, 3)
    with pytest.raises(CheckpointError, match="shape|size"):
        target.load_state_dict(broken)
    with pytest.raises(CheckpointError, match="unexpected"):
        target.load_state_dict({**state, "something.else": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="steps"):
        target.load_state_dict({**state, "steps": torch.zeros(3, dtype=torch.long)})
    assert all(torch.equal(before[k], v) for k, v in target.imagen.state_dict().items())
    with pytest.raises(TypeError, match="state_dict"):
        target.load_state_dict([1, 2])


# -- checkpoint folders -----------------------------------------------------------------------------------------


def test_save_to_and_load_from_checkpoint_folder(cascade, tmp_path):
    trainer = ImagenTrainer(cascade(), checkpoint_path=tmp_path / "run")
    train(trainer, (1,))
    trainer.save_to_checkpoint_folder()
    after_one = weights(trainer.imagen)
    train(trainer, (2,))
    trainer.save_to_checkpoint_folder()
    assert [step for step, _ in trainer.all_checkpoints_sorted()] == [2, 1]

    resumed = ImagenTrainer(cascade(), checkpoint_path=tmp_path / "run")  # resumes the newest
    assert resumed.steps.tolist() == [1, 1]
    resumed.load_from_checkpoint_folder(last_total_steps=1)
    assert resumed.steps.tolist() == [1, 0]
    assert all(torch.equal(after_one[k], v) for k, v in resumed.imagen.state_dict().items())
    resumed.load_from_checkpoint_folder()
    assert resumed.steps.tolist() == [1, 1]
    with pytest.raises(FileNotFoundError, match="last_total_steps"):
        resumed.load_from_checkpoint_folder(last_total_steps=7)
    with pytest.raises(ValueError, match="checkpoint_path"):
        ImagenTrainer(cascade()).save_to_checkpoint_folder()


def test_checkpoint_fs_and_fs_kwargs(cascade, monkeypatch):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    try:
        trainer = ImagenTrainer(cascade(), checkpoint_path="/fs-given-run", checkpoint_fs=memory, checkpoint_every=1)
        train(trainer, (1,))
        assert len(memory.glob("/fs-given-run/checkpoint-*.safetensors")) == 1
        trainer.save("/fs-given-run/final.safetensors")  # any path goes through the given filesystem
        assert memory.exists("/fs-given-run/final.safetensors")

        resumed = ImagenTrainer(cascade(), checkpoint_path="/fs-given-run", checkpoint_fs=memory)
        assert resumed.steps.tolist() == [1, 0]
        assert all(torch.equal(a, b) for a, b in zip(trainer.imagen.parameters(), resumed.imagen.parameters()))

        # fs_kwargs reach the filesystem a checkpoint_path URL names
        seen = {}
        real = fsspec.core.url_to_fs

        def recording(url, **kwargs):
            seen.update(kwargs)
            return real(url)

        monkeypatch.setattr(fsspec.core, "url_to_fs", recording)
        ImagenTrainer(cascade(), checkpoint_path="memory://fs-kwargs-run", fs_kwargs={"anon": True})
        assert seen == {"anon": True}
    finally:
        for folder in ("/fs-given-run", "/fs-kwargs-run"):
            if memory.exists(folder):
                memory.rm(folder, recursive=True)

    with pytest.raises(TypeError, match="checkpoint_fs"):
        ImagenTrainer(cascade(), checkpoint_path="/x", checkpoint_fs="gcs")
    with pytest.raises(ValueError, match="fs_kwargs"):
        ImagenTrainer(cascade(), checkpoint_path="./local-folder", fs_kwargs={"anon": True})
    with pytest.raises(ValueError, match="fs_kwargs"):
        ImagenTrainer(cascade(), checkpoint_path="/x", checkpoint_fs=memory, fs_kwargs={"anon": True})
    with pytest.raises(ValueError, match="checkpoint_fs"):
        ImagenTrainer(cascade(), checkpoint_fs=memory)


# -- text, keywords -----------------------------------------------------------------------------------------------


def test_encode_text_uses_the_cascades_encoder(tiny_unet, tiny_t5):
    imagen = Imagen((tiny_unet(),), image_sizes=8, text_encoder_name=tiny_t5, timesteps=10)
    trainer = ImagenTrainer(imagen)
    captions = ["a whale breaching from afar", "a squirrel examines an acorn"]
    embeds = trainer.encode_text(captions)
    expected, expected_mask = imagen.encode_text(captions, None, None, torch.device("cpu"))
    assert torch.equal(embeds, expected)
    embeds, mask = trainer.encode_text(captions, return_attn_mask=True)
    assert torch.equal(mask, expected_mask) and mask.dtype == torch.bool and embeds.shape[:2] == mask.shape
    # the encoded text trains like the captions themselves
    assert isinstance(trainer(torch.rand(2, 3, 8, 8), text_embeds=embeds, text_masks=mask), float)


def test_fp16_and_precision_are_mixed_precision():
    assert _resolve_mixed_precision(None, None, False) == "no"
    assert _resolve_mixed_precision(None, None, True) == "fp16"
    assert _resolve_mixed_precision(None, "bf16", False) == "bf16"
    assert _resolve_mixed_precision("bf16", "bf16", False) == "bf16"
    with pytest.raises(ValueError, match="precision, fp16"):
        _resolve_mixed_precision(None, "bf16", True)
    with pytest.raises(ValueError, match="precision"):
        _resolve_mixed_precision(None, "fp8", False)
    with pytest.raises(TypeError, match="fp16"):
        _resolve_mixed_precision(None, None, "yes")


def test_conflicting_precisions_are_refused_by_the_trainer(cascade):
    with pytest.raises(ValueError, match="mixed_precision, precision"):
        ImagenTrainer(cascade(), mixed_precision="no", precision="bf16")


def test_split_batches_reaches_accelerate(cascade):
    trainer = ImagenTrainer(cascade(), split_batches=True)
    assert trainer.accelerator.split_batches is True
    assert ImagenTrainer(cascade()).accelerator.split_batches is False


def test_group_wd_params_exempts_biases_and_norm_gains_from_weight_decay(cascade):
    lr, weight_decay = 0.1, 0.5

    def decay_step(group_wd_params):
        trainer = ImagenTrainer(cascade(), lr=lr, weight_decay=weight_decay, group_wd_params=group_wd_params)
        unet = trainer.unet_being_trained(1)
        optimizer = trainer.engine.optimizers["unet1"]
        before = {name: p.detach().clone() for name, p in unet.named_parameters()}
        for p in unet.parameters():
            p.grad = torch.zeros_like(p)  # no gradient: only the decoupled weight decay moves the weights
        optimizer.step()
        return {name: (before[name], p.detach()) for name, p in unet.named_parameters()}

    for name, (before, after) in decay_step(True).items():
        expected = before * (1 - lr * weight_decay) if before.ndim >= 2 else before
        assert torch.allclose(after, expected), name
    assert all(torch.allclose(after, before * (1 - lr * weight_decay)) for before, after in decay_step(False).values())


# -- video conditioning through Imagen and the trainer ------------------------------------------------------------


def record_unet_calls(unet):
    """Records the temporal keywords every call of `unet` gets (its `_forward` is what forward and the guided
    forward both run)."""
    calls, real = [], unet._forward

    def recording(x, time, **kwargs):
        calls.append(
            {k: kwargs.get(k) for k in ("ignore_time", "cond_video_frames", "post_cond_video_frames")}
            | {"frames": x.shape[2] if x.ndim == 5 else None}
        )
        return real(x, time, **kwargs)

    unet._forward = recording
    return calls


def test_ignore_time_and_cond_video_frames_reach_the_video_unets(tiny_unet):
    imagen = Imagen(
        (tiny_unet(video=True), tiny_unet(video=True)),
        image_sizes=(8, 16),
        text_embed_dim=TEXT_DIM,
        timesteps=4,
        temporal_downsample_factor=(2, 1),
    )
    first, second = record_unet_calls(imagen.unets[0]), record_unet_calls(imagen.unets[1])
    videos, embeds = torch.rand(2, 3, 4, 16, 16), torch.randn(2, 4, TEXT_DIM)
    known = torch.zeros(2, 3, 2, 16, 16)  # black frames: -1 in the model's range

    imagen(videos, text_embeds=embeds, unet_number=1, ignore_time=True).backward()
    assert first[-1]["ignore_time"] is True and first[-1]["cond_video_frames"] is None

    imagen(videos, text_embeds=embeds, unet_number=1, cond_video_frames=known, post_cond_video_frames=known)
    call = first[-1]
    # at stage 1's size, every second frame (temporal_downsample_factor 2), in [-1, 1]
    assert call["cond_video_frames"].shape == call["post_cond_video_frames"].shape == (2, 3, 1, 8, 8)
    assert torch.all(call["cond_video_frames"] == -1) and call["frames"] == 2

    out = imagen.sample(text_embeds=embeds, video_frames=4, cond_video_frames=known, steps=2, use_tqdm=False)
    assert out.shape == (2, 3, 4, 16, 16)
    assert first[-1]["cond_video_frames"].shape == (2, 3, 1, 8, 8)
    assert second[-1]["cond_video_frames"].shape == (2, 3, 2, 16, 16)
    imagen.sample(text_embeds=embeds, video_frames=4, ignore_time=True, steps=2, use_tqdm=False)
    assert first[-1]["ignore_time"] is True and second[-1]["ignore_time"] is True


def test_cond_video_frames_steer_the_samples(tiny_unet):
    imagen = Imagen(tiny_unet(video=True), image_sizes=8, text_embed_dim=TEXT_DIM, timesteps=4)
    with torch.no_grad():  # the temporal layers start as identities (zero-initialised outputs): wake them up
        for parameter in imagen.unets[0].parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    embeds = torch.randn(1, 4, TEXT_DIM)

    def sample(known):
        torch.manual_seed(5)
        return imagen.sample(text_embeds=embeds, video_frames=2, cond_video_frames=known, steps=2, use_tqdm=False)

    dark, bright = torch.zeros(1, 3, 2, 8, 8), torch.ones(1, 3, 2, 8, 8)
    assert torch.equal(sample(dark), sample(dark))
    assert not torch.allclose(sample(dark), sample(bright))


def test_the_trainer_passes_video_conditioning_on(tiny_unet):
    imagen = Imagen(tiny_unet(video=True), image_sizes=8, text_embed_dim=TEXT_DIM, timesteps=4)
    calls = record_unet_calls(imagen.unets[0])
    trainer = ImagenTrainer(imagen)
    videos, embeds = torch.rand(2, 3, 4, 8, 8), torch.randn(2, 4, TEXT_DIM)
    loss = trainer(videos, text_embeds=embeds, cond_video_frames=videos[:, :, :2], ignore_time=False)
    assert isinstance(loss, float) and calls[-1]["cond_video_frames"].shape == (2, 3, 2, 8, 8)
    trainer.update()
    out = trainer.sample(
        text_embeds=embeds, video_frames=2, post_cond_video_frames=videos[:, :, :1], steps=2, use_tqdm=False
    )
    assert out.shape == (2, 3, 2, 8, 8) and calls[-1]["post_cond_video_frames"].shape == (2, 3, 1, 8, 8)


def test_video_conditioning_on_an_image_cascade_is_refused(cascade):
    imagen = cascade()
    images, embeds = batch()
    with pytest.raises(ValueError, match="ignore_time.*only video cascades"):
        imagen(images, text_embeds=embeds, unet_number=1, ignore_time=True)
    with pytest.raises(ValueError, match="cond_video_frames"):
        imagen.sample(text_embeds=embeds, cond_video_frames=torch.rand(2, 3, 2, 16, 16), use_tqdm=False)


def test_published_ema_beta_use_lion_and_sample_max_batch_size(cascade):
    trainer = ImagenTrainer(cascade(), ema_beta=0.9)
    assert trainer.engine.ema("unet1").beta == pytest.approx(0.9)
    with pytest.raises(ValueError, match="ema_decay, ema_beta"):
        ImagenTrainer(cascade(), ema_decay=0.99, ema_beta=0.9)
    with pytest.raises(ValueError, match="use_lion.*AdamW"):
        ImagenTrainer(cascade(), use_lion=True)
    with pytest.raises(ValueError, match="max_batch_size"):
        trainer.sample(text_embeds=torch.randn(2, 4, TEXT_DIM), max_batch_size=1)


# -- unets: one-file persistence, config + state dict, guidance, the published constructor keywords ----------------


def noisy_unet(unet, scale=0.05, seed=0):
    """The zero-initialised final conv makes a fresh unet output zeros: random weights make outputs differ."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return unet


def unet_inputs(batch=2, size=8, video_frames=None):
    generator = torch.Generator().manual_seed(1)
    shape = (batch, 3, video_frames, size, size) if video_frames else (batch, 3, size, size)
    return (
        torch.randn(shape, generator=generator),
        torch.rand(batch, generator=generator),
        torch.randn(batch, 4, TEXT_DIM, generator=generator),
    )


@pytest.mark.parametrize("video", [False, True])
def test_unet_persist_to_file_and_hydrate_round_trip(tiny_unet, tmp_path, video):
    from imagen_pytorch import Unet

    unet = noisy_unet(tiny_unet(video=video, text_embed_dim=TEXT_DIM)).eval()
    x, t, embeds = unet_inputs(video_frames=2 if video else None)
    path = unet.persist_to_file(tmp_path / "unet.safetensors")
    header = path.read_bytes()[:8]
    assert int.from_bytes(header, "little") > 0  # a safetensors header, not a pickle
    loaded = Unet.hydrate_from_file(path).eval()  # the file names the class: Unet3D comes back as Unet3D
    assert type(loaded) is type(unet)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, text_embeds=embeds), unet(x, t, text_embeds=embeds))

    config, state = unet.to_config_and_state_dict()
    json_text = __import__("json").dumps(config)  # plain JSON data
    rebuilt = type(unet).from_config_and_state_dict(__import__("json").loads(json_text), state).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x, t, text_embeds=embeds), unet(x, t, text_embeds=embeds))


def test_preset_unets_persist_and_refuse_other_classes(tmp_path):
    from imagen_pytorch import BaseUnet64, SRUnet256, Unet, Unet3D

    small = dict(
        dim=8,
        dim_mults=(1, 2),
        attn_heads=2,
        attn_dim_head=8,
        cond_dim=16,
        attn_pool_num_latents=4,
        text_embed_dim=TEXT_DIM,
        num_resnet_blocks=1,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
    )
    unet = BaseUnet64(**small)
    path = unet.persist_to_file(tmp_path / "base.safetensors")
    loaded = Unet.hydrate_from_file(path)
    assert type(loaded) is BaseUnet64 and loaded.config == unet.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), unet.state_dict().values()))
    with pytest.raises(TypeError, match="not a SRUnet256"):
        SRUnet256.hydrate_from_file(path)
    with pytest.raises(TypeError, match="not a Unet3D"):
        Unet3D.hydrate_from_file(path)

    config, state = unet.to_config_and_state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(CheckpointError, match="missing keys"):
        BaseUnet64.from_config_and_state_dict(config, state)
    with pytest.raises(CheckpointError):  # a key that is no constructor parameter builds nothing
        BaseUnet64.from_config_and_state_dict({**config, "__class__": "os.system"}, unet.state_dict())

    other = tmp_path / "other.safetensors"
    from synthesis_core.checkpoint import save_checkpoint

    save_checkpoint(other, {"w": torch.zeros(1)}, {"something": 1})
    with pytest.raises(CheckpointError, match="persist_to_file"):
        Unet.hydrate_from_file(other)


def test_keep_parallel_frac_blends_between_removed_and_plain_guidance(tiny_unet):
    from synthesis_core.diffusion import cfg_combine

    unet = noisy_unet(tiny_unet(text_embed_dim=TEXT_DIM)).eval()
    x, t, embeds = unet_inputs()
    with torch.no_grad():
        cond = unet(x, t, text_embeds=embeds)
        uncond = unet(x, t, text_embeds=embeds, cond_drop_prob=1.0)

        def guided(**kwargs):
            return unet.forward_with_cond_scale(x, t, text_embeds=embeds, cond_scale=3.0, **kwargs)

        plain, removed = guided(), guided(remove_parallel_component=True)
        assert not torch.allclose(plain, removed)
        assert torch.allclose(guided(remove_parallel_component=True, keep_parallel_frac=1.0), plain, atol=1e-5)
        assert torch.allclose(guided(remove_parallel_component=True, keep_parallel_frac=0.0), removed)
        # closed form: update = orthogonal + frac * parallel, parallel = projection of (cond - uncond) on cond
        update = cond - uncond
        coefficient = (update * cond).flatten(1).sum(1) / (cond * cond).flatten(1).sum(1)
        parallel = coefficient.view(-1, 1, 1, 1) * cond
        expected = cond + 2.0 * ((update - parallel) + 0.25 * parallel)
        assert torch.allclose(guided(remove_parallel_component=True, keep_parallel_frac=0.25), expected, atol=1e-5)
        assert torch.allclose(cfg_combine(cond, uncond, 3.0), plain, atol=1e-5)
    with pytest.raises(ValueError, match="keep_parallel_frac.*remove_parallel_component"):
        guided(keep_parallel_frac=0.5)
    with pytest.raises(ValueError, match="keep_parallel_frac"):
        guided(remove_parallel_component=True, keep_parallel_frac=1.5)


def test_published_unet_keywords_change_the_network(tiny_unet):
    x, t, embeds = unet_inputs()

    # init_conv_to_final_conv_residual: the stem's output joins the final block's input (default True)
    with_residual, without = (
        tiny_unet(text_embed_dim=TEXT_DIM),
        tiny_unet(text_embed_dim=TEXT_DIM, init_conv_to_final_conv_residual=False),
    )
    stem_channels = sum(conv.out_channels for conv in with_residual.init_conv.convs)

    def final_inputs(unet):  # what the final block reads: the decoder's output (+ the stem's)
        seen = []
        handle = unet.final_block.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
        noisy_unet(unet)(x, t, text_embeds=embeds)
        handle.remove()
        return seen[0]

    assert final_inputs(with_residual) - final_inputs(without) == stem_channels
    assert without(x, t, text_embeds=embeds).shape == x.shape

    # layer_mid_attns_depth: transformer blocks in the middle
    deep = tiny_unet(text_embed_dim=TEXT_DIM, layer_mid_attns_depth=3)
    assert len(deep.mid_attention.transformer) == 3 and len(with_residual.mid_attention.transformer) == 1

    # layer_attns_add_text_cond=False: the self-attention blocks do not see the text, a separate layer does
    apart = tiny_unet(text_embed_dim=TEXT_DIM, layer_attns_add_text_cond=False)
    stage = apart.mid_attention
    assert not stage.cross_in_transformer and stage.cross_attn is not None
    assert with_residual.mid_attention.cross_in_transformer and with_residual.mid_attention.cross_attn is None
    assert apart(x, t, text_embeds=embeds).shape == x.shape

    # cross_embed_downsample: strided multi-kernel convolutions between levels, halving the size
    crossed = tiny_unet(
        text_embed_dim=TEXT_DIM, cross_embed_downsample=True, cross_embed_downsample_kernel_sizes=(2, 4)
    )
    downsample = crossed.downs[0].resample.resample
    assert [conv.kernel_size for conv in downsample.convs] == [(2, 2), (4, 4)]
    assert downsample(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    assert noisy_unet(crossed)(x, t, text_embeds=embeds).shape == x.shape
    with pytest.raises(ValueError, match="cross_embed_downsample_kernel_sizes"):
        tiny_unet(cross_embed_downsample=True, cross_embed_downsample_kernel_sizes=(3,))

    # num_image_tokens: the published Unet never used it; only its default is accepted
    tiny_unet(num_image_tokens=4)
    with pytest.raises(ValueError, match="num_image_tokens.*num_time_tokens"):
        tiny_unet(num_image_tokens=8)
    with pytest.raises(ValueError, match="ff_time_token_shift"):
        tiny_unet(video=True, ff_time_token_shift=True)
    tiny_unet(video=True, ff_time_token_shift=False)


def test_unet_resize_mode_resizes_cond_images(tiny_unet):
    import torch.nn.functional as F

    from imagen_pytorch.unet import resize_spatial

    unet = noisy_unet(tiny_unet(text_embed_dim=TEXT_DIM, cond_images_channels=3, resize_mode="bilinear")).eval()
    x, t, embeds = unet_inputs()
    small = torch.rand(2, 3, 4, 4)
    big = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(
            unet(x, t, text_embeds=embeds, cond_images=small),
            unet(x, t, text_embeds=embeds, cond_images=big),
            atol=1e-6,
        )
    assert torch.equal(
        resize_spatial(small, (8, 8), "nearest"), small.repeat_interleave(2, -1).repeat_interleave(2, -2)
    )
    with pytest.raises(ValueError, match="resize_mode"):
        tiny_unet(resize_mode="area")


# -- ElucidatedImagen: the EDM formulas against their closed forms ------------------------------------------------


@pytest.fixture
def elucidated(tiny_unet):
    from imagen_pytorch import ElucidatedImagen

    def build(**kwargs):
        kwargs = dict(dict(image_sizes=(8, 16), text_embed_dim=TEXT_DIM, num_sample_steps=3), **kwargs)
        return ElucidatedImagen((tiny_unet(), tiny_unet()), **kwargs)

    return build


def test_edm_preconditioning_matches_the_closed_forms(elucidated):
    imagen = elucidated()
    sigma, sd = torch.tensor([0.01, 0.5, 3.0, 80.0]), 0.5
    assert torch.allclose(imagen.c_skip(sd, sigma), sd**2 / (sigma**2 + sd**2))
    assert torch.allclose(imagen.c_out(sd, sigma), sigma * sd / torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(imagen.c_in(sd, sigma), 1 / torch.sqrt(sigma**2 + sd**2))
    assert torch.allclose(imagen.c_noise(sigma), torch.log(sigma) / 4)
    assert torch.allclose(imagen.loss_weight(sd, sigma), 1 / imagen.c_out(sd, sigma) ** 2, rtol=1e-5)
    assert float(imagen.c_skip(sd, 0.5)) == pytest.approx(0.5)  # floats too: sigma = sigma_data halves the input
    # D(x) = x0 exactly when the network outputs its target: c_skip + c_out * c_in-scaled identity checks
    assert torch.allclose(imagen.c_skip(sd, sigma) + imagen.c_out(sd, sigma) ** 2 / sd**2, torch.ones(4))

    schedule = imagen.sample_schedule(5, rho=7.0, sigma_min=0.002, sigma_max=80.0)
    ramp = torch.arange(5) / 4
    expected = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert schedule.shape == (6,) and schedule[-1] == 0
    assert torch.allclose(schedule[:-1], expected, rtol=1e-5)

    generator = torch.Generator().manual_seed(0)
    sigmas = imagen.noise_distribution(-1.2, 1.2, 20000, generator=generator)
    assert sigmas.shape == (20000,) and (sigmas > 0).all()
    assert sigmas.log().mean().item() == pytest.approx(-1.2, abs=0.05)
    assert sigmas.log().std().item() == pytest.approx(1.2, abs=0.05)


def test_preconditioned_network_forward_and_threshold_x_start(elucidated):
    imagen = elucidated(dynamic_thresholding_percentile=0.9)
    x = torch.randn(2, 3, 8, 8) * 3
    seen = {}

    def network(scaled, noise, **kwargs):
        seen.update(scaled=scaled, noise=noise, **kwargs)
        return torch.full_like(scaled, 0.25)

    out = imagen.preconditioned_network_forward(network, x, 2.0, sigma_data=0.5, marker=1)
    c_skip, c_out, c_in = (f(0.5, 2.0) for f in (imagen.c_skip, imagen.c_out, imagen.c_in))
    assert torch.allclose(seen["scaled"], c_in * x) and torch.allclose(seen["noise"], imagen.c_noise(2.0).expand(2))
    assert seen["marker"] == 1
    assert torch.allclose(out, c_skip * x + c_out * 0.25)

    clamped = imagen.preconditioned_network_forward(
        network, x, 2.0, sigma_data=0.5, clamp=True, dynamic_threshold=False
    )
    assert torch.allclose(clamped, out.clamp(-1, 1))
    thresholded = imagen.threshold_x_start(out)
    s = out.abs().flatten(1).quantile(0.9, dim=1).clamp(min=1).view(-1, 1, 1, 1)
    assert torch.allclose(thresholded, out.clamp(-s, s) / s)
    assert torch.equal(imagen.threshold_x_start(out, dynamic_threshold=False), out.clamp(-1, 1))


def test_one_unet_sample_is_the_cascades_first_stage(elucidated):
    imagen = elucidated(S_churn=0.0)
    noisy_unet(imagen.unets[0])
    embeds = torch.randn(2, 4, TEXT_DIM)
    full = imagen.sample(
        text_embeds=embeds,
        stop_at_unet_number=1,
        cond_scale=2.0,
        use_tqdm=False,
        generator=torch.Generator().manual_seed(4),
    )
    alone = imagen.one_unet_sample(
        None,
        (2, 3, 8, 8),
        unet_number=1,
        text_embeds=embeds,
        cond_scale=2.0,
        use_tqdm=False,
        generator=torch.Generator().manual_seed(4),
    )
    assert torch.allclose(imagen.unnormalize_img(alone), full, atol=1e-6)

    def alone(**kwargs):
        return imagen.one_unet_sample(
            None,
            (2, 3, 8, 8),
            unet_number=1,
            text_embeds=embeds,
            use_tqdm=False,
            generator=torch.Generator().manual_seed(4),
            **kwargs,
        )

    # sigma_max / sigma_min / dynamic_threshold: this call's settings, the same as a cascade built with them
    hparams_before, thresholding_before = imagen.edm_hparams, imagen.dynamic_thresholding
    other = elucidated(S_churn=0.0, sigma_max=5.0, sigma_min=0.01, dynamic_thresholding=False)
    other.load_state_dict(imagen.state_dict())
    expected = other.one_unet_sample(
        None,
        (2, 3, 8, 8),
        unet_number=1,
        text_embeds=embeds,
        use_tqdm=False,
        generator=torch.Generator().manual_seed(4),
    )
    assert torch.allclose(alone(sigma_max=5.0, sigma_min=0.01, dynamic_threshold=False), expected, atol=1e-6)
    assert imagen.edm_hparams is hparams_before and imagen.dynamic_thresholding is thresholding_before
    assert not torch.allclose(alone(sigma_max=5.0), alone())

    # inpainting: the kept pixels come out as given
    known = torch.rand(2, 3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, :, 4:] = True  # the right half is generated
    painted = alone(inpaint_images=known, inpaint_masks=masks, inpaint_resample_times=2)
    assert torch.allclose(imagen.unnormalize_img(painted)[..., :4], known[..., :4], atol=1e-5)
    assert not torch.allclose(imagen.unnormalize_img(painted)[..., 4:], known[..., 4:], atol=1e-2)

    with pytest.raises(ValueError, match="clamp.*dynamic_threshold"):
        alone(clamp=False)
    with pytest.raises(ValueError, match="sigma_max"):
        alone(sigma_max=0.001)
    with pytest.raises(ValueError, match="inpaint_masks"):
        alone(inpaint_masks=masks)
    with pytest.raises(ValueError, match="shape"):
        imagen.one_unet_sample(None, (2, 8, 8), unet_number=1, text_embeds=embeds)


# -- cascades: unconditional switch, unet placement, images= -------------------------------------------------------


def test_force_unconditional_trains_and_samples_without_text(cascade):
    imagen = cascade()
    assert imagen.force_unconditional_() is imagen
    assert not imagen.condition_on_text and not any(unet.cond_on_text for unet in imagen.unets)
    images = torch.rand(2, 3, 16, 16)
    loss = imagen(images, unet_number=1)
    loss.backward()
    out = imagen.sample(batch_size=2, steps=2, use_tqdm=False, stop_at_unet_number=1)
    assert out.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="text"):
        imagen(images, unet_number=1, text_embeds=torch.randn(2, 4, TEXT_DIM))


def test_one_unet_in_gpu_and_reset_unets_all_one_device(cascade):
    imagen = cascade()
    with imagen.one_unet_in_gpu(unet_number=2) as unet:
        assert unet is imagen.unets[1]
        assert next(unet.parameters()).device == torch.device("cpu")
    with imagen.one_unet_in_gpu(unet=imagen.unets[0]) as unet:
        assert unet is imagen.unets[0]
    with pytest.raises(ValueError, match="unet_number, unet"):
        with imagen.one_unet_in_gpu():
            pass
    with pytest.raises(ValueError, match="unet_number"):
        with imagen.one_unet_in_gpu(unet_number=3):
            pass
    with pytest.raises(ValueError, match="one of this cascade's unets"):
        with imagen.one_unet_in_gpu(unet=cascade().unets[0]):
            pass
    # the meta device stands in for an accelerator (nothing comes back from it, so it is the last move)
    assert imagen.reset_unets_all_one_device("meta") is imagen
    assert all(p.device.type == "meta" for p in imagen.unets.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_one_unet_in_gpu_moves_the_others_to_the_cpu_and_back(cascade):
    imagen = cascade().cuda()
    with imagen.one_unet_in_gpu(unet_number=2):
        assert next(imagen.unets[0].parameters()).device.type == "cpu"
        assert next(imagen.unets[1].parameters()).is_cuda
    assert all(p.is_cuda for p in imagen.unets.parameters())
    imagen.unets[0].cpu()
    imagen.reset_unets_all_one_device()
    assert all(p.is_cuda for p in imagen.unets.parameters())


def test_forward_takes_the_published_images_keyword(cascade, elucidated):
    for imagen in (cascade(), elucidated()):
        images, embeds = batch()
        torch.manual_seed(0)
        by_keyword = imagen(images=images, text_embeds=embeds, unet_number=1)
        torch.manual_seed(0)
        positional = imagen(images, text_embeds=embeds, unet_number=1)
        assert torch.equal(by_keyword, positional)
        with pytest.raises(ValueError, match="images: an alias of images_or_video"):
            imagen(images, images=images + 0.1, text_embeds=embeds, unet_number=1)
        with pytest.raises(TypeError, match="images_or_video: required"):
            imagen(text_embeds=embeds, unet_number=1)


def test_config_check_image_sizes():
    from imagen_pytorch import ElucidatedImagenConfig, ImagenConfig, UnetConfig

    unets = [UnetConfig(dim=8), UnetConfig(dim=8)]
    for config_class in (ImagenConfig, ElucidatedImagenConfig):
        config = config_class(unets=unets, image_sizes=(8, 16), text_embed_dim=TEXT_DIM)
        assert config.check_image_sizes() is config
        with pytest.raises(ValueError, match="image_sizes: expected one size per unet \\(2\\), got 3"):
            config_class(unets=unets, image_sizes=(8, 16, 32), text_embed_dim=TEXT_DIM)
        assert config_class(unets=unets, image_sizes=16, text_embed_dim=TEXT_DIM).check_image_sizes()


# -- ImagenTrainer: the published helpers and keywords ---------------------------------------------------------------


def test_trainer_forward_is_calling_it(cascade):
    first, second = ImagenTrainer(cascade()), ImagenTrainer(cascade())
    second.imagen.load_state_dict(first.imagen.state_dict())
    images, embeds = batch()
    torch.manual_seed(0)
    called = first(images, text_embeds=embeds, unet_number=1)
    torch.manual_seed(0)
    forwarded = second.forward(images, text_embeds=embeds, unet_number=1)
    assert called == forwarded
    grads = [p.grad for p in second.unet_being_trained(1).parameters() if p.grad is not None]
    assert grads  # forward also ran the backward pass


def test_trainer_unets_unwrapped_unet_and_unet_selection(cascade):
    trainer = ImagenTrainer(cascade())
    assert [u is trainer.get_ema_unet(n) for n, u in enumerate(trainer.unets, start=1)] == [True, True]
    plain = ImagenTrainer(cascade(), use_ema=False)
    assert all(a is b for a, b in zip(plain.unets, plain.imagen.unets))
    assert trainer.wrap_unet(2) is trainer.engine.models["unet2"]
    with pytest.raises(ValueError, match="unwrapped_unet.*2 unets"):
        _ = trainer.unwrapped_unet
    assert trainer.validate_unet_number(2) == 2
    with pytest.raises(ValueError, match="unet_number: required"):
        trainer.validate_unet_number()
    with pytest.raises(ValueError, match="unet_number"):
        trainer.validate_unet_number(3)

    assert trainer.validate_and_set_unet_being_trained(2) == 2
    assert trainer.unwrapped_unet is trainer.imagen.unets[1]
    images, embeds = batch()
    trainer(images, text_embeds=embeds, unet_number=2)
    with pytest.raises(ValueError, match="only trains unet 2"):
        trainer.validate_and_set_unet_being_trained(1)
    with pytest.raises(ValueError, match="only_train_unet_number|only trains unet 2"):
        trainer(images, text_embeds=embeds, unet_number=1)
    assert trainer.prepare() is trainer


def test_trainer_iterators_step_with_dl_iter_and_dataset_keywords(cascade):
    from torch.utils.data import TensorDataset

    trainer = ImagenTrainer(cascade(), lr=1e-3)
    with pytest.raises(ValueError, match="no training data"):
        trainer.create_train_iter()
    images, embeds = torch.rand(4, 3, 16, 16), torch.randn(4, 4, TEXT_DIM)
    trainer.add_train_dataset(ds=TensorDataset(images, embeds), batch_size=2)
    trainer.add_valid_dataloader(dl=DataLoader(TensorDataset(images, embeds), batch_size=2))
    iterator = trainer.create_train_iter()
    assert iterator is trainer.create_train_iter() and trainer.create_valid_iter() is not iterator
    loss = trainer.step_with_dl_iter(iterator, unet_number=1)
    assert isinstance(loss, float) and trainer.num_steps_taken(1) == 0  # forward and backward, no step
    assert trainer.update(1) and trainer.num_steps_taken(1) == 1
    with pytest.raises(ValueError, match="ds: an alias of dataset"):
        ImagenTrainer(cascade()).add_train_dataset(TensorDataset(images), ds=TensorDataset(images), batch_size=2)
    with pytest.raises(TypeError, match="dataloader: required"):
        ImagenTrainer(cascade()).add_train_dataloader()
    other = ImagenTrainer(cascade())
    other.add_valid_dataset(ds=TensorDataset(images, embeds), batch_size=2)
    other.add_train_dataloader(dl=DataLoader(TensorDataset(images, embeds), batch_size=2))
    assert other.prepare() is other and isinstance(other.valid_step(unet_number=1), float)


def test_trainer_devices_scaler_and_print(cascade, caplog):
    trainer = ImagenTrainer(cascade())
    with caplog.at_level(logging.INFO, logger="imagen_pytorch.trainer"):
        devices = trainer.print_unet_devices()
        trainer.print(msg="hello")
    assert devices == {
        "unet1": torch.device("cpu"),
        "ema unet1": torch.device("cpu"),
        "unet2": torch.device("cpu"),
        "ema unet2": torch.device("cpu"),
    }
    assert "ema unet2: cpu" in caplog.text and "hello" in caplog.text
    assert trainer.set_accelerator_scaler(1) is trainer.accelerator.scaler  # None without fp16
    with pytest.raises(ValueError, match="unet_number"):
        trainer.set_accelerator_scaler(5)
    trainer.reset_ema_unets_all_one_device("meta")  # meta: the last move (nothing comes back from it)
    devices = trainer.print_unet_devices()
    assert devices["ema unet1"].type == devices["ema unet2"].type == "meta" and devices["unet1"].type == "cpu"


def test_trainer_encode_text_keyword(tiny_unet, tiny_t5):
    imagen = Imagen((tiny_unet(),), image_sizes=8, text_encoder_name=tiny_t5, timesteps=10)
    trainer = ImagenTrainer(imagen)
    captions = ["a whale breaching from afar"]
    assert torch.equal(trainer.encode_text(text=captions), trainer.encode_text(captions))
    with pytest.raises(TypeError, match="texts: required"):
        trainer.encode_text()


def test_save_overwrite_and_without_optim_and_sched(cascade, tmp_path):
    from synthesis_core.checkpoint import load_checkpoint

    trainer = ImagenTrainer(cascade())
    train(trainer, (1,))
    full = trainer.save(tmp_path / "full.safetensors")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trainer.save(full, overwrite=False)
    trainer.save(full)  # overwrite=True is the default
    light = trainer.save(tmp_path / "light.safetensors", without_optim_and_sched=True)
    full_tensors, _ = load_checkpoint(full)
    light_tensors, light_meta = load_checkpoint(light)
    assert any(k.startswith("optimizer.") for k in full_tensors)
    assert not any(k.startswith(("optimizer.", "scheduler.", "scaler.")) for k in light_tensors)
    assert light_meta["optimizers"] == {} and light.stat().st_size < full.stat().st_size

    resumed = ImagenTrainer(cascade())
    resumed.load(light)  # the optimizers restart, everything else is back
    assert resumed.steps.tolist() == [1, 0]
    assert all(torch.equal(a, b) for a, b in zip(trainer.imagen.parameters(), resumed.imagen.parameters()))
    assert not resumed.engine.optimizers["unet1"].state


def test_load_only_model_and_noop_if_not_exist(cascade, tmp_path):
    trainer = ImagenTrainer(cascade(), ema_update_after_step=0, ema_update_every=1)
    train(trainer, (1, 2))
    path = trainer.save(tmp_path / "run.safetensors")

    fresh = ImagenTrainer(cascade(), ema_update_after_step=0, ema_update_every=1)
    ema_before = weights(fresh.get_ema_unet(1))
    fresh.load(path, only_model=True)
    assert all(torch.equal(a, b) for a, b in zip(trainer.imagen.parameters(), fresh.imagen.parameters()))
    assert fresh.steps.tolist() == [0, 0]  # steps, EMA copies and optimizers stay as they were
    assert all(torch.equal(v, ema_before[k]) for k, v in fresh.get_ema_unet(1).state_dict().items())
    assert not fresh.engine.optimizers["unet1"].state

    assert fresh.load(tmp_path / "missing.safetensors", noop_if_not_exist=True) is None
    with pytest.raises(FileNotFoundError):
        fresh.load(tmp_path / "missing.safetensors")

    # a checkpoint whose weights do not fit is refused, changing nothing
    from synthesis_core.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(path)
    key = next(k for k in tensors if k.startswith("model.unet1.") and tensors[k].ndim > 1)
    tensors[key] = torch.zeros(1, 2, 3)
    save_checkpoint(tmp_path / "broken.safetensors", tensors, meta)
    before = weights(fresh.imagen)
    with pytest.raises(CheckpointError, match="shape"):
        fresh.load(tmp_path / "broken.safetensors", only_model=True)
    assert all(torch.equal(before[k], v) for k, v in fresh.imagen.state_dict().items())


def test_t5_module_functions_match_the_core_encoder(tiny_t5):
    from imagen_pytorch.t5 import get_encoded_dim, t5_encode_text, t5_tokenize
    from synthesis_core.text import TextEncoder

    captions = ["a whale breaching from afar", "a squirrel"]
    embeds, mask = t5_encode_text(captions, name=tiny_t5, return_attn_mask=True)
    reference, reference_mask = TextEncoder(tiny_t5).encode(captions, "cpu")
    assert torch.equal(embeds, reference) and torch.equal(mask, reference_mask)
    assert torch.equal(t5_encode_text(captions, name=tiny_t5), reference)
    ids, id_mask = t5_tokenize(captions, name=tiny_t5)
    assert torch.equal(id_mask, reference_mask) and ids.shape == id_mask.shape
    assert get_encoded_dim(tiny_t5) == embeds.shape[-1]
    assert bool(mask[1].sum() < mask[0].sum())  # the shorter caption is padded


def test_published_trainer_scenario_config_dicts_dataset_and_step_count():
    # what imagen-pytorch 2.1's own trainer test does: unets as plain dicts in ImagenConfig, a dataset of
    # (image, text embedding) pairs added to the trainer, one step of unet 1, then its step count
    class PairsDataset(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3, 16, 16), torch.randn(6, 32)

    unet = dict(
        dim=8,
        dim_mults=(1, 2),
        num_resnet_blocks=1,
        layer_attns=False,
        layer_cross_attns=False,
        attn_heads=2,
        text_embed_dim=32,
    )
    imagen = ImagenConfig(unets=(unet,), image_sizes=(16,), text_embed_dim=32).create()
    trainer = ImagenTrainer(imagen=imagen)
    trainer.add_train_dataset(PairsDataset(), batch_size=2)
    before = [p.detach().clone() for p in imagen.unets[0].parameters()]
    loss = trainer.train_step(1)
    assert math.isfinite(loss)
    assert trainer.num_steps_taken(1) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, imagen.unets[0].parameters()))
