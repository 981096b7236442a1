"""synthesis_core.layers: each layer against a direct formula, an invariance or a round trip."""

import math

import pytest
import torch
import torch.nn.functional as F

from synthesis_core.layers import (
    ChannelLayerNorm,
    Downsample,
    FeedForward,
    FrameEmbedding,
    LayerNorm,
    LearnedSinusoidalPosEmb,
    ResnetBlock,
    SinusoidalPosEmb,
    TimestepEmbedding,
    Upsample,
)

# norms


def test_layernorm_matches_formula():
    x = torch.randn(2, 5, 16)
    norm = LayerNorm(16)
    with torch.no_grad():
        norm.gamma.uniform_(0.5, 1.5)
    centred = x - x.mean(-1, keepdim=True)
    expected = centred / centred.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt() * norm.gamma
    assert torch.allclose(norm(x), expected, atol=1e-5)
    assert [name for name, _ in norm.named_parameters()] == ["gamma"]  # no bias


@pytest.mark.parametrize("shape", [(2, 8, 4, 4), (2, 8, 3, 4, 4)])
def test_channel_layernorm_equals_token_layernorm_over_dim_1(shape):
    x = torch.randn(shape)
    channel_ln, token_ln = ChannelLayerNorm(8), LayerNorm(8)
    with torch.no_grad():
        for norm in (channel_ln, token_ln):
            norm.gamma.copy_(torch.linspace(0.5, 1.5, 8))
    assert torch.allclose(channel_ln(x), token_ln(x.movedim(1, -1)).movedim(-1, 1), atol=1e-5)


# feed-forwards


@pytest.mark.parametrize("glu", [True, False])
def test_feedforward_chunked_equals_unchunked_with_gradients(glu):
    plain = FeedForward(16, mult=2, glu=glu)
    chunked = FeedForward(16, mult=2, glu=glu, chunk_size=3)
    chunked.load_state_dict(plain.state_dict())
    x = torch.randn(2, 10, 16, requires_grad=True)
    y_plain = plain(x)
    (grad_plain,) = torch.autograd.grad(y_plain.square().sum(), x)
    y_chunked = chunked(x)
    (grad_chunked,) = torch.autograd.grad(y_chunked.square().sum(), x)
    assert torch.allclose(y_plain, y_chunked, atol=1e-6)
    assert torch.allclose(grad_plain, grad_chunked, atol=1e-6)


def test_feedforward_geglu_formula_and_training_reduces_loss():
    ff = FeedForward(8, mult=1)
    x = torch.randn(4, 3, 8)
    w_in, b_in = ff.net[1][0].weight, ff.net[1][0].bias
    hidden, gate = F.linear(x, w_in, b_in).chunk(2, dim=-1)
    expected = F.linear(hidden * F.gelu(gate), ff.net[-1].weight, ff.net[-1].bias)
    assert torch.allclose(ff(x), expected, atol=1e-6)

    target = torch.randn(4, 3, 8)
    optimizer = torch.optim.Adam(ff.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(ff(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# time embeddings


def test_sinusoidal_pos_emb_analytic_values():
    emb = SinusoidalPosEmb(8)
    out = emb(torch.tensor([0.0, 1.0]))
    assert out.shape == (2, 8)
    assert torch.allclose(out[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = torch.exp(torch.arange(4) * -(math.log(10000) / 3))
    assert torch.allclose(out[1], torch.cat((freqs.sin(), freqs.cos())), atol=1e-6)
    with pytest.raises(ValueError, match="dim"):
        SinusoidalPosEmb(7)


def test_timestep_embeddings_accept_int_and_float_times():
    assert LearnedSinusoidalPosEmb(8)(torch.rand(3)).shape == (3, 9)
    embed = TimestepEmbedding(8, time_dim=12)
    ints = embed(torch.tensor([0, 5, 999]))
    assert ints.shape == (3, 12)
    assert torch.allclose(ints, embed(torch.tensor([0.0, 5.0, 999.0])))
    assert TimestepEmbedding(8, learned=True)(torch.rand(2)).shape == (2, 32)
    with pytest.raises(ValueError, match="times"):
        embed(torch.zeros(2, 1))


# resampling


def test_downsample_is_pixel_unshuffle_then_1x1_conv():
    down = Downsample(4, 6)
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(down(x), down.conv(F.pixel_unshuffle(x, 2)), atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        down(torch.randn(1, 4, 7, 8))


def test_upsamplers_per_frame_on_videos():
    video = torch.randn(2, 4, 3, 4, 4)
    for layer in (Upsample(4, 6), Downsample(4, 6)):
        out = layer(video)
        for frame in range(3):
            assert torch.allclose(out[:, :, frame], layer(video[:, :, frame]), atol=1e-6)
    assert Upsample(4)(video[:, :, 0]).shape == (2, 4, 8, 8)


def test_resnet_block_film_video_and_errors():
    block = ResnetBlock(8, 16, time_emb_dim=12, groups=4)
    images = torch.randn(2, 8, 6, 6)
    time_emb = torch.randn(2, 12)
    out = block(images, time_emb)
    assert out.shape == (2, 16, 6, 6)
    # the time embedding modulates the output (FiLM), and videos go frame by frame with the same embedding
    assert not torch.allclose(out, block(images, torch.randn(2, 12)))
    video = torch.stack((images, images.flip(-1)), dim=2)
    video_out = block(video, time_emb)
    assert torch.allclose(video_out[:, :, 0], out, atol=1e-5)
    assert torch.allclose(video_out[:, :, 1], block(images.flip(-1), time_emb), atol=1e-5)
    with pytest.raises(ValueError, match="time_emb"):
        block(images)
    with pytest.raises(ValueError, match="groups"):
        ResnetBlock(6, 16, groups=4)
    # without a time embedding and with equal dims the residual path is the identity
    plain = ResnetBlock(8, 8, groups=4)
    with torch.no_grad():
        plain.block2.proj.weight.zero_()
        plain.block2.proj.bias.zero_()
    assert torch.allclose(plain(images), images)


def test_layers_run_under_bf16_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        video = torch.randn(1, 8, 2, 4, 4)
        for layer in (ResnetBlock(8, 8, time_emb_dim=4), Downsample(8), Upsample(8)):
            kwargs = {"time_emb": torch.randn(1, 4)} if isinstance(layer, ResnetBlock) else {}
            assert torch.isfinite(layer(video, **kwargs)).all()
        assert torch.isfinite(FeedForward(8, chunk_size=2)(torch.randn(1, 5, 8))).all()


# frame embedding


def test_frame_embedding_starts_as_the_identity_and_old_checkpoints_load():
    emb = torch.randn(3, 16)
    layer = FrameEmbedding(16)
    out = layer(emb, frames=4)
    assert torch.equal(out, emb.repeat_interleave(4, dim=0))  # frame index fastest: ((b t), d)
    trained = FrameEmbedding(16)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.normal_()
    # a checkpoint written before the motion term existed: it loads with the term at zero
    old = {name: value for name, value in trained.state_dict().items() if not name.startswith("motion.")}
    restored = FrameEmbedding(16)
    restored.load_state_dict(old)
    assert not restored.motion.weight.any() and not restored.motion.bias.any()
    with torch.no_grad():
        trained.motion.weight.zero_()
        trained.motion.bias.zero_()
    assert torch.allclose(restored(emb, 5), trained(emb, 5))
    # a partial load that does not include the layer keeps its trained motion term
    with torch.no_grad():
        trained.motion.weight.normal_()
        before = trained.motion.weight.clone()
    trained.load_state_dict({}, strict=False)
    assert torch.equal(trained.motion.weight, before)


def test_frame_embedding_learns_a_pure_condition_by_time_interaction():
    # what "moving left/right/faster/slower" asks of a video model: the target is sign(condition) * tau, so averaged
    # over time the condition says nothing and averaged over conditions the time says nothing; noisy targets and
    # small batches as in diffusion training, where the interaction is a small part of what the loss sees
    frames = 8
    tau = torch.linspace(-1, 1, frames)
    signs = torch.tensor([1.0, -1.0, 0.5, -0.5])

    def relative_error(freeze_motion: bool) -> float:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        embed, layer, readout = torch.nn.Linear(4, 32), FrameEmbedding(32), torch.nn.Linear(32, 1)
        parameters = [*embed.parameters(), *readout.parameters()]
        parameters += [p for name, p in layer.named_parameters() if not (freeze_motion and name.startswith("motion"))]
        optimizer = torch.optim.Adam(parameters, lr=1e-3)
        for _ in range(150):
            conditions = torch.randint(4, (8,), generator=generator)
            target = signs[conditions, None] * tau + torch.randn(8, frames, generator=generator)
            prediction = readout(layer(embed(torch.eye(4)[conditions]), frames))
            loss = F.mse_loss(prediction, target.reshape(-1, 1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            learned = readout(layer(embed(torch.eye(4)), frames)).reshape(4, frames)
        wanted = signs[:, None] * tau
        return float(((learned - wanted) ** 2).mean() / (wanted**2).mean())

    # measured: 0.01-0.05 with the motion term over three seeds, 0.98-1.02 without
    assert relative_error(freeze_motion=False) < 0.15
    # the MLP alone (the frame embedding of video-diffusion-pytorch 0.2/0.3) is still on its plateau
    assert relative_error(freeze_motion=True) > 0.7


def test_frame_embedding_rejects_bad_input():
    layer = FrameEmbedding(8)
    with pytest.raises(ValueError, match="emb"):
        layer(torch.randn(2, 3, 8), frames=2)
    with pytest.raises((ValueError, TypeError), match="frames"):
        layer(torch.randn(2, 8), frames=0)
