"""Behaviour of synthesis_core.quantize: codebooks that learn a clustering, EMA arithmetic, round trips,
straight-through gradients, dead codes, LFQ/FSQ codes, input validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from synthesis_core.quantize import (
    FSQ,
    LFQ,
    QuantizeOutput,
    VectorQuantize,
    fsq_levels,
    kmeans,
    make_quantizer,
    orthogonal_loss,
)


def mixture(num, means, std=0.2):
    which = torch.randint(0, means.shape[0], (num,))
    return means[which] + std * torch.randn(num, means.shape[1])


MEANS = torch.eye(8)[:4] * 4  # four well separated gaussians in 8 dims (pairwise distance 5.7, std 0.2)


# VectorQuantize


def test_output_is_named_tuple_with_contract_shapes():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=16, codebook_size=32)
    out = vq(torch.randn(2, 5, 16))
    assert isinstance(out, QuantizeOutput)
    quantized, indices, loss = out
    assert quantized.shape == (2, 5, 16)
    assert indices.shape == (2, 5) and indices.dtype == torch.long
    assert loss.shape == ()
    assert vq.codebook_size == 32


def test_kmeans_init_codebook_learns_the_mixture():
    torch.manual_seed(0)
    vq = VectorQuantize(
        dim=8, codebook_size=4, decay=0.8, kmeans_init=True, kmeans_iters=10, threshold_ema_dead_code=0.5
    )
    held_out = mixture(512, MEANS)[None]
    vq.eval()
    loss_before = vq(held_out).loss.item()  # codebook not initialised yet (zeros)

    vq.train()
    for _ in range(20):
        vq(mixture(256, MEANS)[None])

    vq.eval()
    out = vq(held_out)
    assert out.loss.item() < 0.05 < 1.0 < loss_before  # 0.04 = std^2 is the floor of the commitment mse
    assert out.indices.unique().numel() == 4  # every code used
    distance_to_nearest_code = torch.cdist(MEANS, vq.codebook).min(dim=-1).values
    assert distance_to_nearest_code.max() < 0.1
    # the clustering is a bijection: each gaussian owns one code
    assert torch.cdist(MEANS, vq.codebook).argmin(dim=-1).unique().numel() == 4


def test_ema_codebook_from_random_init_reaches_noise_floor():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=8, codebook_size=8, decay=0.8, threshold_ema_dead_code=0.5)
    held_out = mixture(512, MEANS)[None]
    vq.eval()
    loss_before = vq(held_out).loss.item()
    vq.train()
    losses = [vq(mixture(256, MEANS)[None]).loss.item() for _ in range(60)]
    vq.eval()
    loss_after = vq(held_out).loss.item()
    assert loss_after < 0.05 < 1.0 < loss_before
    assert sum(losses[-10:]) < sum(losses[:10])
    # every gaussian got at least one code near it (more codes than clusters: some clusters are split)
    assert torch.cdist(MEANS, vq.codebook).min(dim=-1).values.max() < 0.4


def test_kmeans_function_recovers_means_and_sizes():
    torch.manual_seed(1)
    counts = torch.tensor([50, 100, 150, 200])
    samples = torch.cat([MEANS[i] + 0.1 * torch.randn(int(c), 8) for i, c in enumerate(counts)])
    means, sizes = kmeans(samples, 4, num_iters=5)
    order = torch.cdist(MEANS, means).argmin(dim=-1)
    assert order.unique().numel() == 4
    torch.testing.assert_close(means[order], MEANS, atol=0.05, rtol=0)
    assert torch.equal(sizes[order], counts.float())


def test_ema_update_matches_hand_computation():
    decay, eps = 0.5, 1e-5
    vq = VectorQuantize(dim=2, codebook_size=3, decay=decay, eps=eps)
    start = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, -10.0]])
    vq.embed.copy_(start)
    vq.embed_avg.copy_(start)
    vq.cluster_size.fill_(1.0)

    x = torch.tensor([[[1.0, 1.0], [0.0, -1.0], [9.0, 9.0]]])
    out = vq.train()(x)
    assert out.indices.tolist() == [[0, 0, 1]]
    # the output uses the codebook from before the update
    torch.testing.assert_close(out.quantized, start[[0, 0, 1]][None])

    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.tensor([[1.0, 0.0], [9.0, 9.0], [0.0, 0.0]])
    cluster_size = decay * torch.ones(3) + (1 - decay) * counts
    embed_avg = decay * start + (1 - decay) * sums
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + 3 * eps) * total
    torch.testing.assert_close(vq.cluster_size, cluster_size)
    torch.testing.assert_close(vq.embed_avg, embed_avg)
    torch.testing.assert_close(vq.embed, embed_avg / smoothed[:, None])
    # commitment loss of the first call, against the old codes
    torch.testing.assert_close(out.loss, F.mse_loss(x[0], start[[0, 0, 1]]))

    # eval mode never touches the codebook
    before = vq.embed.clone()
    vq.eval()(x)
    assert torch.equal(vq.embed, before)


@pytest.mark.parametrize("kind", ["vq", "vq_low_dim", "vq_cosine", "lfq", "fsq"])
def test_indices_round_trip(kind):
    torch.manual_seed(0)
    quantizer = {
        "vq": lambda: VectorQuantize(dim=16, codebook_size=32),
        "vq_low_dim": lambda: VectorQuantize(dim=16, codebook_size=32, codebook_dim=4),
        "vq_cosine": lambda: VectorQuantize(dim=16, codebook_size=32, use_cosine_sim=True),
        "lfq": lambda: LFQ(dim=16, codebook_size=64),
        "fsq": lambda: FSQ(dim=16, levels=(5, 4, 3)),
    }[kind]()
    x = torch.randn(2, 10, 16)
    quantizer.train()(x)  # a training step first (EMA codebooks change after their output is computed)
    quantized, indices, _ = quantizer.eval()(x)
    assert indices.min() >= 0 and indices.max() < quantizer.codebook_size
    torch.testing.assert_close(quantizer.get_codes_from_indices(indices), quantized, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(quantizer.get_codes_from_indices(indices[0]), quantized[0], atol=1e-5, rtol=1e-5)


def test_indices_are_the_nearest_codes_for_codebook_of_5000():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=16, codebook_size=5000, threshold_ema_dead_code=1)
    x = torch.randn(2, 64, 16)
    vq.eval()
    _, indices, _ = vq(x)
    brute_force = torch.cdist(x.reshape(-1, 16), vq.codebook).argmin(dim=-1)
    assert torch.equal(indices.flatten(), brute_force)
    vq.train()
    quantized, indices, loss = vq(x)
    assert torch.isfinite(loss) and indices.max() < 5000
    assert vq.cluster_size.shape == (5000,) and vq.embed.shape == (5000, 16)


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=8, codebook_size=16)
    x = torch.randn(2, 6, 8, requires_grad=True)
    quantized, _, _ = vq(x)
    quantized.sum().backward()
    # d quantized / d x is the identity under the straight-through estimator
    torch.testing.assert_close(x.grad, torch.ones_like(x))

    encoder = torch.nn.Linear(4, 8)
    vq_low = VectorQuantize(dim=8, codebook_size=16, codebook_dim=3)
    quantized, _, loss = vq_low(encoder(torch.randn(2, 6, 4)))
    (quantized.pow(2).mean() + loss).backward()
    for param in (encoder.weight, vq_low.project_in.weight, vq_low.project_out.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_lower_codebook_dim_projects_in_and_out():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=32, codebook_size=64, codebook_dim=4)
    assert vq.embed.shape == (64, 4)
    x = torch.randn(2, 8, 32)
    quantized, indices, _ = vq.eval()(x)
    projected = vq.project_in(x).reshape(-1, 4)
    assert torch.equal(indices.flatten(), torch.cdist(projected, vq.codebook).argmin(dim=-1))
    torch.testing.assert_close(quantized, vq.project_out(vq.codebook[indices]))


def test_cosine_sim_codebook_is_unit_norm_and_picks_max_similarity():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=8, codebook_size=16, use_cosine_sim=True, decay=0.5)
    for _ in range(3):
        vq.train()(torch.randn(2, 20, 8) * 5)
    torch.testing.assert_close(vq.embed.norm(dim=-1), torch.ones(16))
    x = torch.randn(2, 20, 8) * 3
    quantized, indices, loss = vq.eval()(x)
    similarity = F.normalize(x.reshape(-1, 8), dim=-1) @ vq.embed.t()
    assert torch.equal(indices.flatten(), similarity.argmax(dim=-1))
    torch.testing.assert_close(quantized.norm(dim=-1), torch.ones(2, 20))  # codes, not input magnitudes
    assert loss <= 4.0  # distance between unit vectors is bounded


def test_dead_codes_are_replaced_by_batch_vectors():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=4, codebook_size=6, threshold_ema_dead_code=0.5, ema_update=False)
    with torch.no_grad():
        vq.embed.copy_(torch.randn(6, 4))
        vq.embed[2] = 100.0  # far from any data: never chosen
    vq.cluster_size.copy_(torch.tensor([3.0, 3.0, 0.1, 3.0, 3.0, 3.0]))
    before = vq.embed.detach().clone()

    x = torch.randn(1, 32, 4)
    vq.train()(x)
    alive = [0, 1, 3, 4, 5]
    assert torch.equal(vq.embed.detach()[alive], before[alive])
    assert (vq.embed[2].detach() - x[0]).abs().sum(dim=-1).min() < 1e-6  # now one of the batch vectors
    assert vq.cluster_size[2] > 0.1

    # with the EMA codebook, a dead code that is then used stays near the data
    ema = VectorQuantize(dim=8, codebook_size=4, decay=0.8, threshold_ema_dead_code=0.5)
    ema.embed.fill_(100.0)  # every code far away: only one gets used, the others die and come back on the data
    ema.embed_avg.fill_(100.0)
    for _ in range(20):
        ema.train()(mixture(128, MEANS)[None])
    assert ema.codebook.norm(dim=-1).max() < 6.0  # all codes came back from 100 * sqrt(8) to the data
    assert ema.eval()(mixture(256, MEANS)[None]).indices.unique().numel() == 4  # and are used again


def test_learned_codebook_and_orthogonal_regularisation():
    with pytest.raises(ValueError, match="ema_update=False"):
        VectorQuantize(dim=8, codebook_size=4, orthogonal_reg_weight=1.0)

    torch.testing.assert_close(orthogonal_loss(torch.eye(4)), torch.tensor(0.0))
    torch.testing.assert_close(orthogonal_loss(torch.ones(4, 3)), torch.tensor(12 / 16))  # k(k-1)/k^2

    torch.manual_seed(0)
    vq = VectorQuantize(dim=8, codebook_size=8, ema_update=False, orthogonal_reg_weight=1.0, commitment_weight=0.25)
    assert isinstance(vq.embed, torch.nn.Parameter)
    optimizer = torch.optim.Adam(vq.parameters(), lr=0.05)
    ortho_before = orthogonal_loss(vq.embed).item()
    losses = []
    for _ in range(40):
        _, _, loss = vq.train()(mixture(128, MEANS)[None])
        optimizer.zero_grad()
        loss.backward()
        assert vq.embed.grad is not None
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert orthogonal_loss(vq.embed).item() < ortho_before


def test_kmeans_init_runs_once_and_is_saved():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=8, codebook_size=4, kmeans_init=True)
    assert not vq.initted
    vq.train()(mixture(128, MEANS)[None])
    assert vq.initted
    state = vq.state_dict()
    assert "initted" in state and "embed_avg" in state and "cluster_size" in state
    assert not any(isinstance(value, torch.nn.Parameter) for value in dict(vq.named_buffers()).values())

    restored = VectorQuantize(dim=8, codebook_size=4, kmeans_init=True)
    restored.load_state_dict(state)
    far_away = torch.full((1, 16, 8), 50.0)
    before = restored.embed.clone()
    restored.train()(far_away)
    # no second k-means init on the far-away batch: only the EMA moved the chosen code part of the way
    assert (restored.embed - before).abs().sum(dim=-1).gt(1e-3).sum() == 1


def test_bfloat16_autocast():
    torch.manual_seed(0)
    for quantizer in (
        VectorQuantize(dim=16, codebook_size=32, codebook_dim=8, kmeans_init=True),
        LFQ(dim=16, codebook_size=16),
        FSQ(dim=16),
    ):
        x = torch.randn(2, 12, 16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            quantized, indices, loss = quantizer.train()(x)
        assert torch.isfinite(quantized.float()).all() and torch.isfinite(loss)
        assert indices.dtype == torch.long and indices.max() < quantizer.codebook_size
        (quantized.float().sum() + loss).backward()
        assert x.grad is not None and x.grad.abs().sum() > 0

    # a model cast to bf16 keeps working (statistics are accumulated in float32)
    vq_bf16 = VectorQuantize(dim=8, codebook_size=16, threshold_ema_dead_code=0.5).to(torch.bfloat16)
    quantized, indices, loss = vq_bf16.train()(torch.randn(2, 12, 8, dtype=torch.bfloat16))
    assert quantized.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert vq_bf16.embed.dtype == torch.bfloat16 and torch.isfinite(vq_bf16.embed.float()).all()

    # with identity projections the codes are chosen in float32 exactly as without autocast
    vq = VectorQuantize(dim=8, codebook_size=64).eval()
    x = torch.randn(2, 30, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_indices = vq(x).indices
    assert torch.equal(autocast_indices, vq(x).indices)


def test_bad_inputs_give_clear_errors():
    vq = VectorQuantize(dim=8, codebook_size=4)
    with pytest.raises(ValueError, match="x: expected a 3-dimensional"):
        vq(torch.randn(4, 8))
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, seq, 8\)"):
        vq(torch.randn(2, 3, 7))
    with pytest.raises(TypeError, match="x"):
        vq([[0.0] * 8])
    with pytest.raises(TypeError, match="indices"):
        vq.get_codes_from_indices(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="codebook_size"):
        VectorQuantize(dim=8, codebook_size=0)
    with pytest.raises(ValueError, match="codebook_size: LFQ needs a power of 2"):
        LFQ(dim=8, codebook_size=100)
    with pytest.raises(ValueError, match="levels"):
        FSQ(dim=8, levels=(8, 1))
    with pytest.raises(ValueError, match="kind"):
        make_quantizer("rvq", 8, 16)


# LFQ


def test_lfq_codes_are_sign_bits():
    lfq = LFQ(dim=4, codebook_size=16)  # codebook dim 4 == dim: no projections
    x = torch.tensor([[[0.3, -0.2, 0.1, -5.0], [-1.0, -1.0, -1.0, -1.0], [2.0, 2.0, 2.0, 2.0]]])
    quantized, indices, loss = lfq.eval()(x)
    assert indices.tolist() == [[0b1010, 0, 15]]
    torch.testing.assert_close(quantized, torch.sign(x))
    torch.testing.assert_close(loss, 0.25 * F.mse_loss(x, torch.sign(x)))
    codes = lfq.get_codes_from_indices(torch.arange(16))
    assert codes.unique(dim=0).shape == (16, 4) and set(codes.unique().tolist()) == {-1.0, 1.0}


def test_lfq_entropy_loss_analytic():
    lfq = LFQ(dim=3, codebook_size=8)
    all_codes = lfq.get_codes_from_indices(torch.arange(8))
    # confident (large logits) and uniformly spread over the codebook: per-sample entropy 0, codebook entropy log 8
    torch.testing.assert_close(lfq._entropy_loss(all_codes * 20), torch.tensor(-math.log(8)), atol=1e-4, rtol=0)
    # every sample on the same code: still confident, but the codebook entropy is 0
    collapsed = all_codes[:1].expand(8, 3) * 20
    torch.testing.assert_close(lfq._entropy_loss(collapsed), torch.tensor(0.0), atol=1e-4, rtol=0)
    # zero input: each bit is a fair coin for every sample: per-sample entropy 3 log 2, codebook entropy log 8
    torch.testing.assert_close(lfq._entropy_loss(torch.zeros(4, 3)), torch.tensor(0.0), atol=1e-5, rtol=0)

    lfq_projected = LFQ(dim=16, codebook_size=32)
    x = torch.randn(2, 8, 16, requires_grad=True)
    quantized, _, loss = lfq_projected.train()(x)
    (quantized.sum() + loss).backward()
    assert lfq_projected.project_in.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


# FSQ


def test_fsq_grid_and_codebook_size():
    fsq = FSQ(dim=4, levels=(8, 5, 5, 5))
    assert fsq.codebook_size == 1000
    x = torch.linspace(-20, 20, 4001)[None, :, None].expand(1, 4001, 4).contiguous()
    quantized, indices, loss = fsq(x)
    assert loss == 0
    for i, level in enumerate((8, 5, 5, 5)):
        assert quantized[..., i].unique().numel() == level  # exactly `level` values per dim, within [-1, 1]
    assert quantized.abs().max() <= 1

    all_codes = fsq.indices_to_codes(torch.arange(1000))
    assert all_codes.unique(dim=0).shape[0] == 1000
    assert torch.equal(fsq.codes_to_indices(all_codes), torch.arange(1000))

    x = torch.randn(2, 6, 4, requires_grad=True)
    quantized, _, _ = fsq(x)
    quantized.sum().backward()
    assert (x.grad > 0).all()  # straight-through rounding of a monotone bound


def test_fsq_levels_and_make_quantizer():
    assert fsq_levels(1000) == (8, 5, 5, 5)
    assert fsq_levels(5000) == (8, 5, 5, 5, 5)
    assert fsq_levels(100) == (5, 5, 4)
    for size in (7, 100, 300, 1024, 5000, 65536):
        levels = fsq_levels(size)
        assert math.prod(levels) >= size
        assert math.prod(levels) <= size * 1.1  # close to the request
        assert all(3 <= level <= 8 for level in levels)

    fsq = make_quantizer("fsq", 16, 5000)
    assert isinstance(fsq, FSQ) and fsq.codebook_size == 5000
    assert make_quantizer("fsq", 16, levels=(4, 4)).codebook_size == 16
    vq = make_quantizer("vq", 16, 100, use_cosine_sim=True)
    assert isinstance(vq, VectorQuantize) and vq.codebook_size == 100 and vq.use_cosine_sim
    lfq = make_quantizer("lfq", 16, 256, entropy_loss_weight=0.2)
    assert isinstance(lfq, LFQ) and lfq.codebook_size == 256 and lfq.codebook_dim == 8


# a bad batch never poisons the codebook


def _buffers_finite(module):
    return {
        name: bool(torch.isfinite(buffer.float()).all())
        for name, buffer in module.named_buffers()
        if buffer.is_floating_point()
    }


def _with_bad_rows(x, value):
    x = x.clone()
    x[0, ::3] = value  # every third vector of the first sample
    x[0, 1, 0] = value  # and a single bad entry in an otherwise finite vector
    return x


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "options",
    [
        dict(kmeans_init=True, threshold_ema_dead_code=0.5),
        dict(threshold_ema_dead_code=2.0, decay=0.5),
        dict(use_cosine_sim=True, kmeans_init=True, threshold_ema_dead_code=0.5),
        dict(codebook_dim=4, threshold_ema_dead_code=0.5),
        dict(ema_update=False, threshold_ema_dead_code=2.0),
    ],
    ids=["kmeans+dead", "ema+dead", "cosine", "low_dim", "learned"],
)
def test_non_finite_features_never_reach_the_codebook_buffers(options, value):
    torch.manual_seed(0)
    vq = VectorQuantize(dim=8, codebook_size=16, **options).train()
    bad = _with_bad_rows(mixture(48, MEANS)[None].repeat(2, 1, 1), value)
    vq(bad)  # the output may be NaN; the statistics must not
    assert all(_buffers_finite(vq).values()), _buffers_finite(vq)
    assert torch.isfinite(vq.codebook).all()
    if options.get("kmeans_init"):
        assert vq.initted  # initialised from the finite vectors of the batch
    # the next clean step trains an intact codebook
    out = vq(mixture(64, MEANS)[None])
    assert torch.isfinite(out.loss) and torch.isfinite(out.quantized).all()
    assert all(_buffers_finite(vq).values())


def test_ema_update_counts_only_the_finite_vectors():
    torch.manual_seed(0)
    clean = mixture(32, MEANS)[None]
    bad = torch.cat((clean, torch.full((1, 5, 8), float("nan"))), dim=1)
    a, b = VectorQuantize(dim=8, codebook_size=8, decay=0.7), VectorQuantize(dim=8, codebook_size=8, decay=0.7)
    b.load_state_dict(a.state_dict())
    a.train()(clean)
    b.train()(bad)
    for name in ("cluster_size", "embed_avg", "embed"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name))


def test_a_batch_without_finite_vectors_changes_nothing():
    torch.manual_seed(0)
    nan_batch = torch.full((2, 6, 8), float("nan"))
    # k-means init is postponed to the first batch that has finite vectors
    vq = VectorQuantize(dim=8, codebook_size=4, kmeans_init=True, threshold_ema_dead_code=0.5).train()
    before = {name: buffer.clone() for name, buffer in vq.named_buffers()}
    vq(nan_batch)
    assert not vq.initted
    assert torch.equal(vq.embed, before["embed"]) and torch.equal(vq.embed_avg, before["embed_avg"])
    vq(mixture(64, MEANS)[None])
    assert vq.initted and torch.cdist(MEANS, vq.codebook).min(dim=-1).values.max() < 0.5

    # decay=0 replaces the statistics by the batch's: an all-NaN batch has none, and every code keeps its own
    vq = VectorQuantize(dim=8, codebook_size=4, decay=0.0).train()
    embed = vq.embed.clone()
    vq(nan_batch)
    assert all(_buffers_finite(vq).values()) and torch.equal(vq.embed, embed)


def test_overflowing_finite_features_keep_the_codebook_finite():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=4, codebook_size=4, decay=0.5).train()
    huge = torch.full((1, 8, 4), 3e38)  # finite, but their sum overflows float32
    vq(huge)
    assert all(_buffers_finite(vq).values())
    assert torch.isfinite(vq(torch.randn(1, 8, 4)).loss)


def test_kmeans_refuses_non_finite_samples():
    with pytest.raises(ValueError, match="samples: expected finite values"):
        kmeans(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="samples: expected at least one sample"):
        kmeans(torch.zeros(0, 2), 2)


@pytest.mark.parametrize(
    "quantizer", [lambda: LFQ(dim=8, codebook_size=16), lambda: FSQ(dim=8, levels=(5, 5, 4))], ids=["lfq", "fsq"]
)
def test_lfq_and_fsq_keep_no_statistics_to_poison(quantizer):
    quantizer = quantizer().train()
    before = {name: buffer.clone() for name, buffer in quantizer.named_buffers()}
    quantizer(_with_bad_rows(torch.randn(2, 12, 8), float("nan")))
    for name, buffer in quantizer.named_buffers():
        assert torch.equal(buffer, before[name]), name
    out = quantizer(torch.randn(2, 12, 8))
    assert torch.isfinite(out.loss) and torch.isfinite(out.quantized).all()
