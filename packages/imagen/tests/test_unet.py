"""Behaviour of the image U-Net: conditioning, guidance, casting, presets, training signal, input errors."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from imagen_pytorch.unet import BaseUnet64, NullUnet, PixelShuffleUpsample, SRUnet256, SRUnet1024, Unet

torch.set_num_threads(1)

TEXT_DIM = 16


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    # torch.testing.assert_close imports torch.distributed on first use: seconds we do not need to spend
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), (actual - expected).abs().max().item()


@torch.no_grad()
def sgd_step(model: nn.Module, lr: float) -> None:
    # plain SGD by hand: the first torch.optim optimizer imports torch._dynamo, many seconds on a busy CPU
    for param in model.parameters():
        if param.grad is not None:
            param.sub_(lr * param.grad)


def tiny_unet(cls=Unet, **overrides) -> Unet:
    kwargs = dict(
        dim=8,
        dim_mults=(1, 2),
        cond_dim=16,
        text_embed_dim=TEXT_DIM,
        num_resnet_blocks=1,
        layer_attns=(False, True),
        layer_cross_attns=(False, True),
        attn_heads=2,
        attn_dim_head=8,
        max_text_len=8,
        attn_pool_num_latents=4,
        init_cross_embed_kernel_sizes=(3, 5),
    )
    kwargs.update(overrides)
    return cls(**kwargs)


def as_if_trained(model: nn.Module) -> nn.Module:
    """Give the zero-initialised output layers (final conv, global context, ...) random weights, as training would,
    so that every path of the network influences the output."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 0 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def inputs(batch=2, size=8, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 3, size, size, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, tokens, TEXT_DIM, generator=g),
    )


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(memory_efficient=True),
        dict(use_linear_attn=True, use_linear_cross_attn=True, layer_cross_attns=False),
        dict(combine_upsample_fmaps=True, final_resnet_block=False, pixel_shuffle_upsample=False),
        dict(init_cross_embed=False, attn_pool_text=False, layer_attns_depth=2, num_resnet_blocks=(1, 2)),
        dict(dim_mults=(1, 2, 2), layer_attns=False, layer_cross_attns=(False, False, True), channels_out=6),
    ],
)
def test_shapes_and_finite(overrides):
    unet = as_if_trained(tiny_unet(**overrides))
    x, t, text = inputs(size=8)
    out = unet(x, t, text_embeds=text)
    assert out.shape == (2, unet.channels_out, 8, 8)
    assert torch.isfinite(out).all()


def test_starts_by_predicting_zero_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    unet = tiny_unet(use_linear_cross_attn=True)
    x, t, text = inputs()
    assert torch.equal(unet(x, t, text_embeds=text), torch.zeros_like(x))
    as_if_trained(unet).train()
    unet(x, t, text_embeds=text, cond_drop_prob=0.5).square().mean().backward()
    # the null text tokens / hidden only get gradients from dropped samples, and this batch has some of both
    unused = [name for name, p in unet.named_parameters() if p.grad is None]
    assert not unused or all("null_text" in name for name in unused), unused


def test_output_depends_on_text_and_not_on_it_when_dropped():
    unet = as_if_trained(tiny_unet())
    x, t, text = inputs()
    other_text = torch.randn_like(text)
    out, out_other = unet(x, t, text_embeds=text), unet(x, t, text_embeds=other_text)
    assert not torch.allclose(out, out_other, atol=1e-4)
    # every sample dropped: the null condition replaces the text entirely
    dropped, dropped_other = (unet(x, t, text_embeds=e, cond_drop_prob=1.0) for e in (text, other_text))
    assert_close(dropped, dropped_other)
    assert not torch.allclose(dropped, out, atol=1e-4)


def test_masked_text_tokens_are_ignored():
    unet = as_if_trained(tiny_unet())
    x, t, text = inputs(tokens=6)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    changed = text.clone()
    changed[0, 4:] = torch.randn(2, TEXT_DIM) * 5
    assert_close(unet(x, t, text_embeds=text, text_mask=mask), unet(x, t, text_embeds=changed, text_mask=mask))
    changed_kept = text.clone()
    changed_kept[0, 0] += 3
    assert not torch.allclose(
        unet(x, t, text_embeds=text, text_mask=mask)[0],
        unet(x, t, text_embeds=changed_kept, text_mask=mask)[0],
        atol=1e-4,
    )


def test_time_is_continuous_in_any_range():
    unet = as_if_trained(tiny_unet())
    x, _, text = inputs()
    sigma_like = torch.tensor([-1.7, 2.3])  # c_noise = log(sigma) / 4 of the elucidated formulation
    out_a = unet(x, sigma_like, text_embeds=text)
    out_b = unet(x, sigma_like + 0.05, text_embeds=text)
    assert torch.isfinite(out_a).all() and not torch.allclose(out_a, out_b, atol=1e-5)
    # integer times are accepted as floats
    assert_close(unet(x, torch.tensor([3, 7]), text_embeds=text), unet(x, torch.tensor([3.0, 7.0]), text_embeds=text))


def test_forward_with_cond_scale():
    unet = as_if_trained(tiny_unet())
    x, t, text = inputs()
    cond = unet(x, t, text_embeds=text)
    assert_close(unet.forward_with_cond_scale(x, t, text_embeds=text, cond_scale=1.0), cond)
    uncond = unet(x, t, text_embeds=text, cond_drop_prob=1.0)
    guided = unet.forward_with_cond_scale(x, t, text_embeds=text, cond_scale=3.0)
    assert_close(guided, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-4)
    # per-sample scales
    scales = torch.tensor([1.0, 5.0])
    per_sample = unet.forward_with_cond_scale(x, t, text_embeds=text, cond_scale=scales)
    assert_close(per_sample[0], cond[0], atol=1e-5, rtol=1e-4)
    assert_close(per_sample[1], (uncond + 5.0 * (cond - uncond))[1], atol=1e-5, rtol=1e-4)


def test_cast_model_parameters():
    unet = tiny_unet()
    same = unet.cast_model_parameters(
        lowres_cond=False, text_embed_dim=TEXT_DIM, channels=3, channels_out=3, cond_on_text=True
    )
    assert same is unet

    sr = unet.cast_model_parameters(
        lowres_cond=True, text_embed_dim=24, channels=3, channels_out=None, cond_on_text=True
    )
    assert type(sr) is Unet and sr.lowres_cond and sr.text_embed_dim == 24 and sr.config["dim"] == 8
    as_if_trained(sr)
    x, t, _ = inputs()
    text = torch.randn(2, 5, 24)
    lowres = torch.rand_like(x)
    out = sr(x, t, text_embeds=text, lowres_cond_img=lowres, lowres_noise_times=t)
    assert out.shape == x.shape
    other = sr(x, t, text_embeds=text, lowres_cond_img=torch.rand_like(x), lowres_noise_times=t)
    assert not torch.allclose(out, other, atol=1e-4)
    other_level = sr(x, t, text_embeds=text, lowres_cond_img=lowres, lowres_noise_times=t * 0.5)
    assert not torch.allclose(out, other_level, atol=1e-5)
    with pytest.raises(ValueError, match="lowres_cond_img"):
        sr(x, t, text_embeds=text)

    unconditional = unet.cast_model_parameters(
        lowres_cond=False, text_embed_dim=None, channels=1, channels_out=2, cond_on_text=False
    )
    assert not unconditional.cond_on_text and unconditional.channels == 1 and unconditional.channels_out == 2
    assert unconditional(torch.randn(2, 1, 8, 8), t).shape == (2, 2, 8, 8)


def test_presets_take_overrides_and_round_trip(tmp_path):
    # the acceptance test's scaled-down SR unet; the per-level preset values are overridden or fitted
    sr = SRUnet256(
        dim=8,
        dim_mults=(1, 2),
        num_resnet_blocks=(1, 2),
        layer_attns=(False, True),
        layer_cross_attns=False,
        text_embed_dim=TEXT_DIM,
        attn_heads=2,
        attn_dim_head=8,
    )
    assert sr.memory_efficient and sr.downsample_factor == 4
    x, t, text = inputs(size=8)
    assert sr(x, t, text_embeds=text).shape == x.shape

    fitted = SRUnet1024(dim=8, dim_mults=(1, 2), text_embed_dim=TEXT_DIM, attn_heads=2, attn_dim_head=8)
    assert len(fitted.downs) == 2
    cast = fitted.cast_model_parameters(
        lowres_cond=True, text_embed_dim=TEXT_DIM, channels=3, channels_out=3, cond_on_text=True
    )
    assert type(cast) is SRUnet1024 and cast.lowres_cond and cast.memory_efficient

    base = as_if_trained(
        BaseUnet64(
            dim=8,
            dim_mults=(1, 2),
            text_embed_dim=TEXT_DIM,
            attn_heads=2,
            attn_dim_head=8,
            max_text_len=8,
            attn_pool_num_latents=4,
        )
    )
    base.save_pretrained(tmp_path / "base")
    loaded = BaseUnet64.from_pretrained(tmp_path / "base").eval()
    assert type(loaded) is BaseUnet64
    assert_close(loaded(x, t, text_embeds=text), base(x, t, text_embeds=text), rtol=0, atol=0)


def test_self_conditioning_and_cond_images_feed_the_network():
    unet = as_if_trained(tiny_unet(self_cond=True, cond_images_channels=2))
    x, t, text = inputs()
    cond_images = torch.randn(2, 2, 4, 4)  # resized to the size of x
    base = unet(x, t, text_embeds=text, cond_images=cond_images)
    assert_close(base, unet(x, t, text_embeds=text, cond_images=cond_images, self_cond=torch.zeros_like(x)))
    assert not torch.allclose(
        base, unet(x, t, text_embeds=text, cond_images=cond_images, self_cond=torch.randn_like(x)), atol=1e-4
    )
    assert not torch.allclose(base, unet(x, t, text_embeds=text, cond_images=cond_images + 1), atol=1e-4)


def test_tiny_unet_overfits_one_batch():
    torch.manual_seed(0)
    unet = tiny_unet(layer_attns=False, attn_pool_text=False)  # cross-attention still reads the text
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.rand(4)
    alpha, sigma = torch.cos(t * torch.pi / 2)[:, None, None, None], torch.sin(t * torch.pi / 2)[:, None, None, None]
    x_t = alpha * x0 + sigma * noise
    text = torch.randn(4, 5, TEXT_DIM)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(unet(x_t, t, text_embeds=text), noise)
        unet.zero_grad()
        loss.backward()
        sgd_step(unet, lr=0.3)
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_bf16_autocast_on_cpu():
    unet = as_if_trained(tiny_unet(use_linear_cross_attn=True, layer_cross_attns=(False, False)))
    x, t, text = inputs()
    reference = unet(x, t, text_embeds=text)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet.forward_with_cond_scale(
            x, t, text_embeds=text, text_mask=torch.ones(2, 5, dtype=torch.bool), cond_scale=1.0
        )
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - reference).abs().mean() < 0.05 * reference.abs().mean() + 1e-3


def test_channels_last_gives_the_same_result():
    # channels-last weights and inputs (fast convolutions on GPUs) make the token reshapes of attention free views
    unet = as_if_trained(tiny_unet(use_linear_attn=True, combine_upsample_fmaps=True))
    x, t, text = inputs()
    reference = unet(x, t, text_embeds=text)
    unet = unet.to(memory_format=torch.channels_last)
    out = unet(x.contiguous(memory_format=torch.channels_last), t, text_embeds=text)
    assert_close(out, reference, atol=1e-5, rtol=1e-4)


def test_bad_inputs_give_clear_errors():
    unet = tiny_unet()
    x, t, text = inputs()
    with pytest.raises(ValueError, match=r"text_embeds: expected shape \(2, tokens, 16\)"):
        unet(x, t, text_embeds=torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(torch.randn(2, 3, 9, 8), t, text_embeds=text)
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny_unet(memory_efficient=True)(torch.randn(2, 3, 6, 6), t, text_embeds=text)
    with pytest.raises(ValueError, match="x: expected shape"):
        unet(torch.randn(2, 4, 8, 8), t, text_embeds=text)
    with pytest.raises(ValueError, match="time"):
        unet(x, torch.rand(3), text_embeds=text)
    with pytest.raises(ValueError, match="cond_on_text"):
        unet(x, t)
    with pytest.raises(ValueError, match="text_mask"):
        unet(x, t, text_embeds=text, text_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="lowres_cond=False"):
        unet(x, t, text_embeds=text, lowres_cond_img=x, lowres_noise_times=t)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        unet(x, t, text_embeds=text, cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="num_resnet_blocks: expected one value or 2 values"):
        tiny_unet(num_resnet_blocks=(1, 2, 3))
    with pytest.raises(TypeError, match="unexpected keyword"):
        tiny_unet(not_an_argument=1)
    with pytest.raises(ValueError, match="multiple of groups"):
        tiny_unet(dim=12)


def test_null_unet():
    null = NullUnet()
    x = torch.randn(2, 3, 8, 8)
    assert null(x, torch.rand(2), text_embeds=torch.randn(2, 4, 768)) is x
    assert null.forward_with_cond_scale(x, torch.rand(2), cond_scale=3.0) is x
    assert [p.numel() for p in null.parameters()] == [1]
    assert not null.lowres_cond and null.channels == 3 and not null.is_video
    same = null.cast_model_parameters(
        lowres_cond=False, text_embed_dim=768, channels=3, channels_out=3, cond_on_text=True
    )
    assert same is null
    cast = null.cast_model_parameters(
        lowres_cond=True, text_embed_dim=512, channels=3, channels_out=3, cond_on_text=True
    )
    assert isinstance(cast, NullUnet) and cast.lowres_cond and cast.text_embed_dim == 512


def test_pixel_shuffle_upsample_icnr_starts_as_nearest_neighbour():
    up = PixelShuffleUpsample(4, 6)
    x = torch.randn(1, 4, 5, 5)
    out = up(x)
    assert out.shape == (1, 6, 10, 10)
    blocks = rearrange(out, "b c (h p1) (w p2) -> b c h w (p1 p2)", p1=2, p2=2)
    assert torch.allclose(blocks, blocks[..., :1].expand_as(blocks), atol=1e-6)
    # the first sub-pixel of every block is the 1x1 conv + SiLU of the input pixel
    assert torch.allclose(blocks[..., 0], F.silu(up.conv(x))[:, ::4], atol=1e-6)
