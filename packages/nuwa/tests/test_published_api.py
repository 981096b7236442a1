"""The nuwa-pytorch 0.7.8 names: NUWA.embed_text, NUWASketch.embed_sketch (frame masks), Sparse3DNA(causal=False,
rel_pos_bias=False), VQGanVAE(attn_dropout=...), copy_for_eval, the trainer's spellings, and refused keywords;
NUWA(text_rotary_pos_emb=, sparse_3dna_rel_pos_bias=), NUWASketch.forward(sketch_mask=), VQGanVAE.codebook and
encode(fmap=), NUWATrainer(wd=, num_sampled_frames=), VQGanVAETrainer(images_memmap_path=, images_memmap_shape=)."""

import itertools

import numpy as np
import pytest
import torch
from einops import rearrange

from nuwa_pytorch import NUWA, NUWATrainer, Sparse3DNA, VQGanVAETrainer


def test_embed_text_is_encode_text_and_takes_a_mask(make_nuwa):
    model = make_nuwa().eval()
    text = torch.tensor([[3, 4, 5, 0, 0, 0], [6, 7, 8, 9, 10, 11]])
    encodings, mask = model.encode_text(text)
    torch.testing.assert_close(model.embed_text(text), encodings)
    assert mask.tolist()[0] == [True, True, True, False, False, False]
    # an explicit mask is what the encoder attends with: hiding the last real word changes the others' encodings
    custom = mask.clone()
    custom[0, 2] = False
    masked = model.embed_text(text, mask=custom)
    assert not torch.allclose(masked[0, :2], encodings[0, :2])
    torch.testing.assert_close(masked[1], encodings[1])
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        model.embed_text(text, mask=custom.long())


def make_sketch_model(make_vae, **kwargs):
    from nuwa_pytorch import NUWASketch

    settings = dict(
        dim=16,
        max_video_frames=2,
        sketch_max_video_frames=2,
        sketch_enc_depth=1,
        sketch_enc_heads=2,
        sketch_enc_dim_head=8,
        dec_depth=1,
        dec_heads=2,
        dec_dim_head=8,
    )
    settings.update(kwargs)
    return NUWASketch(vae=make_vae(), sketch_vae=make_vae(channels=1, vq_codebook_size=8), **settings)


def test_embed_sketch_masks_absent_frames(make_vae):
    model = make_sketch_model(make_vae).eval()
    model.sketch_vae.train()(torch.rand(8, 1, 16, 16), return_loss=True)  # k-means initialises its codebook
    model.sketch_vae.eval()
    sketch = torch.rand(1, 2, 1, 16, 16)
    full, full_mask = model.embed_sketch(sketch)
    assert full_mask.all() and full.shape == (1, 2 * 16, 16)
    # frame 1 marked absent: its tokens are masked, and what frame 0's tokens see no longer depends on it
    only_first = torch.tensor([[True, False]])
    first, mask = model.embed_sketch(sketch, mask=only_first)
    assert mask[0, :16].all() and not mask[0, 16:].any()
    assert not torch.allclose(first[:, :16], full[:, :16])  # frame 0 no longer attends to frame 1
    tokens = model.sketch_vae.get_video_indices(sketch)
    for seed in range(20):  # another frame 1 that the sketch VAE tokenizes differently
        other = sketch.clone()
        other[:, 1] = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
        if not torch.equal(model.sketch_vae.get_video_indices(other), tokens):
            break
    else:
        raise AssertionError("no frame found that tokenizes differently")
    torch.testing.assert_close(model.embed_sketch(other, mask=only_first)[0][:, :16], first[:, :16])
    assert not torch.allclose(model.embed_sketch(other)[0][:, :16], full[:, :16])
    # one sketch image (b, c, h, w) is a one-frame sketch
    torch.testing.assert_close(model.embed_sketch(sketch[:, 0])[0], model.embed_sketch(sketch[:, :1])[0])


@pytest.mark.parametrize(
    "keyword",
    [
        dict(enc_reversible=True),
        dict(sketch_enc_use_sparse_3dna=True),
        dict(cross_2dna_kernel_size=3),
        dict(cross_2dna_dilation=2),
    ],
)
def test_sketch_keywords_for_designs_we_do_not_have_are_refused(make_vae, keyword):
    with pytest.raises(ValueError, match=next(iter(keyword))):
        make_sketch_model(make_vae, **keyword)


def bidirectional_reference(attn: Sparse3DNA, x: torch.Tensor) -> torch.Tensor:
    """Dense attention with the centred 3D window written out position by position."""
    frames, height, width = attn.video_shape
    kt, kh, kw = attn.kernel_size
    dt, dh, dw = attn.dilation
    seq_len = x.shape[1]
    mask = torch.full((attn.heads, seq_len, seq_len), float("-inf"))
    for query in range(seq_len):
        t, rest = divmod(query, height * width)
        y, x_ = divmod(rest, width)
        for i, j, k in itertools.product(range(kt), range(kh), range(kw)):
            key_t, key_y, key_x = t + (i - kt // 2) * dt, y + (j - kh // 2) * dh, x_ + (k - kw // 2) * dw
            if not (0 <= key_t < frames and 0 <= key_y < height and 0 <= key_x < width):
                continue
            key = (key_t * height + key_y) * width + key_x
            if key < seq_len:
                bias = attn.rel_pos_bias[:, (i * kh + j) * kw + k] if attn.rel_pos_bias is not None else 0.0
                mask[:, query, key] = bias
    q = rearrange(attn.to_q(x), "b n (h d) -> b h n d", h=attn.heads)
    k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in attn.to_kv(x).chunk(2, dim=-1))
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask
    return attn.to_out(rearrange(logits.softmax(dim=-1) @ v, "b h n d -> b n (h d)"))


@pytest.mark.parametrize("rel_pos_bias", [True, False])
def test_bidirectional_sparse_3dna_equals_dense_reference(rel_pos_bias):
    attn = Sparse3DNA(
        16,
        video_shape=(4, 3, 4),
        kernel_size=(3, 3, 3),
        dilation=(1, 2, 1),
        heads=2,
        dim_head=8,
        causal=False,
        rel_pos_bias=rel_pos_bias,
    )
    if rel_pos_bias:
        torch.nn.init.normal_(attn.rel_pos_bias)
    else:
        assert attn.rel_pos_bias is None and not any("rel_pos_bias" in k for k in attn.state_dict())
    x = torch.randn(2, 4 * 12 - 3, 16)
    torch.testing.assert_close(attn(x), bidirectional_reference(attn, x), atol=1e-5, rtol=1e-5)
    # a later token now changes earlier outputs (its window reaches back)
    perturbed = x.clone()
    perturbed[:, 20] += 1.0
    assert (attn(perturbed) - attn(x))[:, :20].abs().amax() > 1e-6
    with pytest.raises(ValueError, match="forward_step: token-by-token decoding needs causal=True"):
        attn.forward_step(x[:, :1], 0, attn.new_cache(2, x.device, x.dtype))
    with pytest.raises(ValueError, match="kernel_size: with causal=False the frame kernel must be odd"):
        Sparse3DNA(16, video_shape=(4, 3, 4), kernel_size=(2, 3, 3), causal=False)


def test_causal_sparse_3dna_without_rel_pos_bias_is_plain_windowed_attention():
    with_bias = Sparse3DNA(16, video_shape=(3, 2, 2), heads=2, dim_head=8)
    without = Sparse3DNA(16, video_shape=(3, 2, 2), heads=2, dim_head=8, rel_pos_bias=False)
    without.load_state_dict({k: v for k, v in with_bias.state_dict().items() if k != "rel_pos_bias"})
    x = torch.randn(1, 12, 16)
    torch.testing.assert_close(without(x), with_bias(x))  # the bias starts at zero
    cache = without.new_cache(1, x.device, x.dtype)
    steps = torch.cat([without.forward_step(x[:, p : p + 1], p, cache) for p in range(12)], dim=1)
    torch.testing.assert_close(steps, without(x), atol=1e-5, rtol=1e-5)


def test_vae_attn_dropout_and_copy_for_eval(make_vae):
    vae = make_vae(use_attn=True, attn_dropout=0.5)
    images = torch.rand(2, 3, 16, 16)
    vae.train()
    assert not torch.equal(vae.encode(images), vae.encode(images))  # dropout on the attention weights
    frozen = vae.copy_for_eval()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in vae.parameters()) and vae.training  # the original is untouched
    torch.testing.assert_close(frozen.encode(images), frozen.encode(images))
    vae.eval()
    torch.testing.assert_close(frozen(images), vae(images))
    with pytest.raises(ValueError, match="attn_dropout"):
        make_vae(attn_dropout=1.5)


def test_vae_trainer_published_spellings_and_validation_split(make_vae, tmp_path):
    images = [torch.rand(3, 16, 16) for _ in range(10)]
    trainer = VQGanVAETrainer(
        make_vae(),
        dataset=images,
        batch_size=2,
        num_train_steps=2,
        wd=0.1,
        ema_beta=0.9,
        ema_update_after_step=5,
        valid_frac=0.2,
        random_split_seed=3,
        num_sample_images=2,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path,
        cpu=True,
    )
    assert trainer.optimizers["vae"].param_groups[0]["weight_decay"] == 0.1
    assert trainer.ema("vae").beta == 0.9 and trainer.ema("vae").update_after_step == 5
    assert len(trainer.dataset) == 8 and len(trainer.valid_dataset) == 2
    # the held-out items are never trained on, and the same seed gives the same split
    held_out = {id(images[i]) for i in trainer.valid_dataset.indices}
    assert held_out.isdisjoint(id(images[i]) for i in trainer.dataset.indices)
    again = VQGanVAETrainer(
        make_vae(),
        dataset=images,
        batch_size=2,
        num_train_steps=2,
        valid_frac=0.2,
        random_split_seed=3,
        results_folder=tmp_path / "again",
        cpu=True,
    )
    assert again.valid_dataset.indices == trainer.valid_dataset.indices
    logs = trainer.train_step()
    assert set(logs) == {"loss", "recon_mse"}
    sheet = trainer.save_results()
    assert sheet.is_file()
    with pytest.raises(ValueError, match="wd: an alias of weight_decay"):
        VQGanVAETrainer(make_vae(), dataset=images, weight_decay=0.1, wd=0.2, results_folder=tmp_path, cpu=True)
    with pytest.raises(ValueError, match="valid_frac"):
        VQGanVAETrainer(make_vae(), dataset=images, valid_frac=1.0, results_folder=tmp_path, cpu=True)


def test_text_rotary_pos_emb_false_uses_absolute_positions(make_nuwa, tmp_path):
    assert make_nuwa().text_pos_emb is None  # rotary by default
    model = make_nuwa(text_rotary_pos_emb=False).eval()
    assert model.text_rotary_emb is None and model.text_pos_emb.weight.shape == (6, 16)
    text = torch.tensor([[3, 4, 5, 6]])
    permutation = torch.tensor([2, 0, 3, 1])
    encodings = model.embed_text(text)
    # the positions are all the encoder knows of order: without them, permuting the words permutes the encodings
    assert not torch.allclose(model.embed_text(text[:, permutation]), encodings[:, permutation], atol=1e-5)
    with torch.no_grad():
        model.text_pos_emb.weight.zero_()
    torch.testing.assert_close(model.embed_text(text[:, permutation]), model.embed_text(text)[:, permutation])
    model.save_pretrained(tmp_path / "nuwa")
    loaded = NUWA.from_pretrained(tmp_path / "nuwa").eval()
    assert loaded.text_pos_emb is not None
    torch.testing.assert_close(loaded.embed_text(text), model.embed_text(text))


def test_sparse_3dna_rel_pos_bias_false_has_no_bias(make_nuwa):
    with_bias = make_nuwa().eval()
    without = make_nuwa(vae=with_bias.vae, sparse_3dna_rel_pos_bias=False).eval()
    assert not any("rel_pos_bias" in key for key in without.state_dict())
    assert any("rel_pos_bias" in key for key in with_bias.state_dict())
    without.load_state_dict({k: v for k, v in with_bias.state_dict().items() if "rel_pos_bias" not in k})
    text = torch.tensor([[3, 4, 5]])
    video_indices = torch.randint(0, 32, (1, 3 * 16))
    # the bias starts at zero: the same logits until it is trained
    torch.testing.assert_close(without(text, video_indices=video_indices), with_bias(text, video_indices=video_indices))


def test_sketch_forward_sketch_mask_hides_absent_frames(make_vae):
    model = make_sketch_model(make_vae).eval()
    model.sketch_vae.train()(torch.rand(8, 1, 16, 16), return_loss=True)  # k-means initialises its codebook
    model.sketch_vae.eval()
    sketch = torch.rand(1, 2, 1, 16, 16)
    video_indices = torch.randint(0, 32, (1, 2 * 16))
    full = model(sketch, video_indices=video_indices)
    torch.testing.assert_close(
        model(sketch, video_indices=video_indices, sketch_mask=torch.ones(1, 2, dtype=torch.bool)), full
    )
    only_first = torch.tensor([[True, False]])
    masked = model(sketch, video_indices=video_indices, sketch_mask=only_first)
    other = sketch.clone()
    other[:, 1] = 1.0 - other[:, 1]
    torch.testing.assert_close(model(other, video_indices=video_indices, sketch_mask=only_first), masked)
    assert not torch.allclose(masked, full)
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        model(sketch, video_indices=video_indices, sketch_mask=only_first.long())


@pytest.mark.parametrize("codebook_dim", [None, 4])
def test_vae_codebook_property_decodes_like_the_indices(make_vae, codebook_dim):
    vae = make_vae(vq_codebook_dim=codebook_dim)
    vae.train()(torch.rand(4, 3, 16, 16), return_loss=True)  # k-means initialises the codebook
    vae.eval()
    assert vae.codebook.shape == (32, vae.codebook_dim)
    indices = torch.randint(0, 32, (2, 16))
    fmap = rearrange(vae.codebook[indices], "b (h w) d -> b d h w", h=4)
    torch.testing.assert_close(vae.decode(fmap, quantize=False), vae.codebook_indices_to_video(indices)[:, 0])
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(vae.encode(fmap=images), vae.encode(images))
    with pytest.raises(ValueError, match="fmap: an alias of x"):
        vae.encode(images, fmap=images + 0.1)


def test_nuwa_trainer_wd_and_num_sampled_frames(make_nuwa, tmp_path):
    items = [(torch.randint(0, 32, (2, 4, 4)), torch.tensor([3, 4, 5])) for _ in range(2)]
    kwargs = dict(dataset=items, num_frames=2, batch_size=2, num_train_steps=1, results_folder=tmp_path, cpu=True)
    trainer = NUWATrainer(make_nuwa(), wd=0.01, num_sampled_frames=float("inf"), **kwargs)
    assert trainer.optimizers["nuwa"].param_groups[0]["weight_decay"] == 0.01
    assert trainer.sample_num_frames == 2  # min(training frames, inf)
    assert NUWATrainer(make_nuwa(), num_sampled_frames=1, **kwargs).sample_num_frames == 1
    with pytest.raises(ValueError, match="num_sampled_frames: an alias of sample_num_frames"):
        NUWATrainer(make_nuwa(), num_sampled_frames=1, sample_num_frames=2, **kwargs)
    with pytest.raises(ValueError, match="num_sampled_frames: expected a number of frames >= 1"):
        NUWATrainer(make_nuwa(), num_sampled_frames=0, **kwargs)
    with pytest.raises(ValueError, match="wd: an alias of weight_decay"):
        NUWATrainer(make_nuwa(), weight_decay=0.1, wd=0.2, **kwargs)


def test_vae_trainer_reads_a_memmap_of_images(make_vae, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "images.memmap"
    stored = np.memmap(path, dtype=np.uint8, mode="w+", shape=pixels.shape)
    stored[:] = pixels
    stored.flush()
    del stored
    trainer = VQGanVAETrainer(
        make_vae(),
        images_memmap_path=path,
        images_memmap_shape=(6, 16, 16, 3),
        batch_size=2,
        num_train_steps=1,
        save_results_every=None,
        save_model_every=None,
        results_folder=tmp_path / "r",
        cpu=True,
    )
    assert len(trainer.dataset) == 6
    torch.testing.assert_close(trainer.dataset[4], torch.from_numpy(pixels[4]).permute(2, 0, 1).float() / 255)
    assert torch.isfinite(torch.tensor(trainer.train_step()["loss"]))

    # larger images are resized and centre-cropped to the VAE's image size; grey images need a grey VAE
    big = tmp_path / "big.memmap"
    np.memmap(big, dtype=np.uint8, mode="w+", shape=(2, 32, 32)).flush()
    grey = VQGanVAETrainer(
        make_vae(channels=1),
        images_memmap_path=big,
        images_memmap_shape=(2, 32, 32),
        results_folder=tmp_path / "g",
        cpu=True,
    )
    assert grey.dataset[0].shape == (1, 16, 16)
    with pytest.raises(ValueError, match="holds 1-channel images, but the VAE takes 3"):
        VQGanVAETrainer(
            make_vae(), images_memmap_path=big, images_memmap_shape=(2, 32, 32), results_folder=tmp_path / "g", cpu=True
        )
    with pytest.raises(ValueError, match="is 6144 uint8 values, but"):
        VQGanVAETrainer(
            make_vae(),
            images_memmap_path=big,
            images_memmap_shape=(2, 32, 32, 3),
            results_folder=tmp_path / "g",
            cpu=True,
        )
    with pytest.raises(ValueError, match="images_memmap_shape: needed with images_memmap_path="):
        VQGanVAETrainer(make_vae(), images_memmap_path=path, results_folder=tmp_path / "g", cpu=True)
    with pytest.raises(ValueError, match="pass exactly one of dataset=, folder= or images_memmap_path="):
        VQGanVAETrainer(
            make_vae(),
            images_memmap_path=path,
            images_memmap_shape=(6, 16, 16, 3),
            dataset=[torch.rand(3, 16, 16)],
            results_folder=tmp_path / "g",
            cpu=True,
        )
    with pytest.raises(FileNotFoundError, match="images_memmap_path: no file"):
        VQGanVAETrainer(
            make_vae(),
            images_memmap_path=tmp_path / "none",
            images_memmap_shape=(1, 16, 16, 3),
            results_folder=tmp_path / "g",
            cpu=True,
        )
