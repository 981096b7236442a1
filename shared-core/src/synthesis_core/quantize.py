"""Vector quantizers that turn continuous features `(batch, seq, dim)` into discrete tokens.

Three interchangeable quantizers share one interface:

    quantizer = VectorQuantize(dim=256, codebook_size=5000)       # or LFQ(...), FSQ(...), make_quantizer(...)
    quantized, indices, loss = quantizer(features)                  # (b, n, dim), (b, n) long, scalar
    codes = quantizer.get_codes_from_indices(indices)               # == quantized (values), through project_out

- `VectorQuantize`: a learned codebook (VQ-VAE), updated by exponential moving averages of the assigned vectors
  (or by gradients with `ema_update=False`), optional k-means init, cosine-similarity codebook, lower codebook
  dimension with in/out projections, orthogonal regularisation and dead-code replacement.
- `LFQ`: lookup-free quantization (MAGVIT-v2): the code is the sign pattern of log2(codebook_size) projected dims.
- `FSQ`: finite scalar quantization: each projected dim is bounded and rounded to one of `levels[i]` values.

Gradients reach the encoder through the straight-through estimator. Codebook math runs in float32, also under
bf16 autocast (argmin over distances in bf16 picks wrong codes).

A bad batch never poisons a codebook: the statistics `VectorQuantize` keeps in buffers (EMA cluster sizes and
sums, the k-means init, dead-code replacements) are computed from the finite feature vectors only, and a code
whose new statistics would not be finite (overflow) keeps its old ones. The output for a non-finite input is
whatever it is (NaN), so the training step is skipped by the trainer's NaN guard and the next clean batch trains
an intact codebook. LFQ and FSQ keep no statistics.
"""

from __future__ import annotations

import logging
import math
from itertools import combinations_with_replacement
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from torch import Tensor, nn

from synthesis_core.checks import check_choice, check_in_range, check_positive_int, check_tensor
from synthesis_core.utils import default, l2norm

logger = logging.getLogger(__name__)

__all__ = [
    "QuantizeOutput",
    "VectorQuantize",
    "LFQ",
    "FSQ",
    "make_quantizer",
    "fsq_levels",
    "kmeans",
    "orthogonal_loss",
]


class QuantizeOutput(NamedTuple):
    """What every quantizer returns: `quantized (b, n, dim)`, `indices (b, n)` long and a scalar `loss`."""

    quantized: Tensor
    indices: Tensor
    loss: Tensor


# helpers


def _check_features(x: Any, dim: int) -> Tensor:
    return check_tensor("x", x, ndim=3, shape=("batch", "seq", dim), names=("batch", "seq", "dim"), dtype_floating=True)


def _check_indices(indices: Any) -> Tensor:
    check_tensor("indices", indices)
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise TypeError(f"indices: expected an integer tensor of code indices, got dtype {indices.dtype}")
    return indices


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: Tensor) -> Tensor:
    """Sum codebook statistics over data-parallel replicas so that every replica keeps the same codebook."""
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast_from_first_rank(t: Tensor) -> Tensor:
    """Random codebook (re)initialisations differ per replica; rank 0 decides for everyone."""
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _squared_distances(x: Tensor, codebook: Tensor) -> Tensor:
    """(n, d), (k, d) -> (n, k) squared euclidean distances (float32, clamped at 0 against rounding)."""
    return (_nearest_code_scores(x, codebook, use_cosine_sim=False) + x.pow(2).sum(dim=-1, keepdim=True)).clamp(min=0)


def _nearest_code_scores(x: Tensor, codebook: Tensor, use_cosine_sim: bool) -> Tensor:
    """(n, d), (k, d) -> (n, k) scores whose argmin is the nearest code: `||e||^2 - 2 <x, e>` (the squared
    distance without the per-row constant `||x||^2`) or `-cos` for unit vectors. One fused matmul."""
    if use_cosine_sim:
        return -(x @ codebook.t())
    codebook_sq = rearrange(codebook.pow(2).sum(dim=-1), "k -> 1 k")
    return torch.addmm(codebook_sq, x, codebook.t(), alpha=-2)


def _assignment_scores(x: Tensor, codebook: Tensor, use_cosine_sim: bool) -> Tensor:
    """(n, d), (k, d) -> (n, k) distances (squared euclidean, or `-cos` for unit vectors): lower is nearer."""
    if use_cosine_sim:
        return _nearest_code_scores(x, codebook, use_cosine_sim=True)
    return _squared_distances(x, codebook)


def _sample_vectors(samples: Tensor, num: int) -> Tensor:
    """`num` rows of `samples` drawn at random (without replacement when there are enough)."""
    num_samples = samples.shape[0]
    if num_samples >= num:
        index = torch.randperm(num_samples, device=samples.device)[:num]
    else:
        index = torch.randint(0, num_samples, (num,), device=samples.device)
    return samples[index]


def _kmeans_plus_plus_init(samples: Tensor, num_clusters: int, use_cosine_sim: bool, max_rounds: int = 64) -> Tensor:
    """k-means++ seeding (D^2 sampling): spreads the initial means so that Lloyd's iterations do not start with
    two means in one cluster. Exact k-means++ for up to `max_rounds` clusters; larger codebooks draw their means
    in `max_rounds` batches (each batch by D^2 to the means so far), so the cost stays that of one Lloyd step."""
    num_samples = samples.shape[0]
    if num_samples <= num_clusters:
        # every sample becomes a mean; the rest are repeats (they stay empty and can be revived as dead codes)
        return torch.cat((samples, _sample_vectors(samples, num_clusters - num_samples)))

    per_round = math.ceil(num_clusters / max_rounds)
    first = torch.randint(0, num_samples, (1,), device=samples.device)
    means = samples[first]
    closest = _assignment_scores(samples, means, use_cosine_sim).squeeze(-1)
    while means.shape[0] < num_clusters:
        # cosine scores are -cos in [-1, 1]; shift so that the weight is a non-negative distance
        weights = (closest + 1.0) if use_cosine_sim else closest
        weights = weights.clamp(min=0) + 1e-12  # all-zero weights (duplicate samples) fall back to uniform
        chosen = torch.multinomial(weights, min(per_round, num_clusters - means.shape[0]), replacement=False)
        new_means = samples[chosen]
        means = torch.cat((means, new_means))
        closest = torch.minimum(closest, _assignment_scores(samples, new_means, use_cosine_sim).min(dim=-1).values)
    return means


@torch.no_grad()
def kmeans(
    samples: Tensor,
    num_clusters: int,
    num_iters: int = 10,
    use_cosine_sim: bool = False,
) -> tuple[Tensor, Tensor]:
    """k-means (k-means++ seeding + Lloyd's iterations) of `samples (n, d)`.

    Returns `(means (num_clusters, d), cluster_sizes (num_clusters,))`, both float32. With `use_cosine_sim` the
    samples are expected unit-normalised and the means are re-normalised (spherical k-means). Empty clusters keep
    their previous mean.
    """
    check_tensor("samples", samples, ndim=2, names=("num_samples", "dim"), dtype_floating=True)
    check_positive_int("num_clusters", num_clusters)
    if samples.shape[0] == 0:
        raise ValueError("samples: expected at least one sample to cluster, got none")
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("samples: expected finite values, got NaN or inf (means would be NaN)")
    samples = samples.float()
    means = _kmeans_plus_plus_init(samples, num_clusters, use_cosine_sim)
    cluster_sizes = torch.zeros(num_clusters, device=samples.device)

    for iteration in range(num_iters + 1):  # the last round only recomputes the cluster sizes of the final means
        buckets = _nearest_code_scores(samples, means, use_cosine_sim).argmin(dim=-1)
        ones = torch.ones_like(buckets, dtype=torch.float)
        cluster_sizes = torch.zeros_like(cluster_sizes).index_add_(0, buckets, ones)
        if iteration == num_iters:
            break
        sums = torch.zeros_like(means).index_add_(0, buckets, samples)
        new_means = sums / rearrange(cluster_sizes.clamp(min=1), "k -> k 1")
        if use_cosine_sim:
            new_means = l2norm(new_means)
        means = torch.where(rearrange(cluster_sizes == 0, "k -> k 1"), means, new_means)
    return means, cluster_sizes


def orthogonal_loss(codebook: Tensor) -> Tensor:
    """Mean squared cosine similarity between distinct codes, `||E E^T - I||^2 / k^2` with unit rows of `E`.

    Pushes codes apart in direction (orthogonal codes), which keeps large codebooks used (Shin et al. 2021).
    """
    num_codes = codebook.shape[0]
    normed = l2norm(codebook.float())
    cosine_sim = normed @ normed.t()
    identity = torch.eye(num_codes, device=codebook.device)
    return (cosine_sim - identity).pow(2).sum() / (num_codes**2)


def _projections(dim: int, codebook_dim: int) -> tuple[nn.Module, nn.Module]:
    if codebook_dim == dim:
        return nn.Identity(), nn.Identity()
    return nn.Linear(dim, codebook_dim), nn.Linear(codebook_dim, dim)


# vector quantization with a learned codebook


class VectorQuantize(nn.Module):
    """VQ-VAE quantizer with an EMA (or learned) codebook.

    Forward on `x (b, n, dim)`: project to `codebook_dim`, pick the nearest code (euclidean, or cosine with
    `use_cosine_sim`), return the code projected back to `dim` with straight-through gradients to `x`.

    Training-mode side effects, in order, all without gradients:
      1. k-means init of the codebook on the first batch (`kmeans_init=True`, `kmeans_iters` Lloyd iterations);
      2. dead-code replacement: codes whose EMA cluster size is below `threshold_ema_dead_code` are replaced by
         random vectors of the batch (and get a cluster size equal to the threshold, so they are not re-expired
         at once);
      3. EMA update (`ema_update=True`): `cluster_size` and `embed_avg` (sum of assigned vectors) move towards
         the batch statistics with `decay`, and each code becomes `embed_avg / cluster_size`, with Laplace
         smoothing `(cluster_size + eps) / (total + k * eps) * total` so that unused codes never divide by 0.
    With `ema_update=False` the codebook is an `nn.Parameter` trained by the codebook loss
    `||sg(x) - e||^2` (and the orthogonal regulariser); cluster sizes are still tracked for dead codes.

    The loss is `commitment_weight * ||x - sg(e)||^2` (+ the codebook loss without EMA, + `orthogonal_reg_weight`
    times `orthogonal_loss` over the codebook, or over `orthogonal_reg_max_codes` random codes of it).
    """

    # buffers (and `embed`, a buffer or a Parameter), declared for the type checker
    embed: Tensor
    embed_avg: Tensor
    cluster_size: Tensor
    initted: Tensor

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        decay: float = 0.99,
        commitment_weight: float = 1.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        use_cosine_sim: bool = False,
        orthogonal_reg_weight: float = 0.0,
        orthogonal_reg_max_codes: int | None = None,
        threshold_ema_dead_code: float = 0,
        ema_update: bool = True,
        eps: float = 1e-5,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("codebook_size", codebook_size)
        codebook_dim = default(codebook_dim, dim)
        check_positive_int("codebook_dim", codebook_dim)
        check_in_range("decay", decay, 0.0, 1.0)
        check_in_range("commitment_weight", commitment_weight, 0.0, None)
        check_positive_int("kmeans_iters", kmeans_iters, allow_zero=True)
        check_in_range("orthogonal_reg_weight", orthogonal_reg_weight, 0.0, None)
        check_in_range("threshold_ema_dead_code", threshold_ema_dead_code, 0.0, None)
        check_in_range("eps", eps, 0.0, None)
        if orthogonal_reg_max_codes is not None:
            check_positive_int("orthogonal_reg_max_codes", orthogonal_reg_max_codes)
        if orthogonal_reg_weight > 0 and ema_update:
            # an EMA codebook is rewritten from its running averages every step, so a gradient regulariser on it
            # would be silently undone
            raise ValueError(
                f"orthogonal_reg_weight={orthogonal_reg_weight} needs a codebook learned by gradients: "
                "pass ema_update=False (or orthogonal_reg_weight=0 to keep the EMA codebook)"
            )

        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.decay = decay
        self.commitment_weight = commitment_weight
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.use_cosine_sim = use_cosine_sim
        self.orthogonal_reg_weight = orthogonal_reg_weight
        self.orthogonal_reg_max_codes = orthogonal_reg_max_codes
        self.threshold_ema_dead_code = threshold_ema_dead_code
        self.ema_update = ema_update
        self.eps = eps

        self.project_in, self.project_out = _projections(dim, codebook_dim)

        if kmeans_init:
            embed = torch.zeros(codebook_size, codebook_dim)  # overwritten by the first training batch
        else:
            embed = torch.randn(codebook_size, codebook_dim)
            embed = l2norm(embed) if use_cosine_sim else embed
        if ema_update:
            self.register_buffer("embed", embed)
            self.register_buffer("embed_avg", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        # every code starts as if it had been chosen once: embed_avg / cluster_size == embed from the start
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("initted", torch.tensor(not kmeans_init))

    @property
    def codebook(self) -> Tensor:
        """The codes actually used for lookup, `(codebook_size, codebook_dim)` (unit rows with cosine sim)."""
        return l2norm(self.embed) if self.use_cosine_sim else self.embed

    # training-time codebook maintenance

    @torch.compiler.disable
    @torch.no_grad()
    def _init_codebook_with_kmeans(self, flat: Tensor) -> None:
        if bool(self.initted):
            return
        # only finite vectors are clustered; a batch without any (on any replica, so that all replicas agree)
        # postpones the init to the next batch rather than writing NaN means into the codebook
        flat = flat[torch.isfinite(flat).all(dim=-1)]
        lacking = torch.tensor(float(flat.shape[0] == 0), device=self.cluster_size.device)
        if _all_reduce_sum(lacking).item() > 0:
            logger.warning("k-means codebook init postponed: the batch has no finite feature vectors")
            return
        means, cluster_sizes = kmeans(flat, self.codebook_size, self.kmeans_iters, self.use_cosine_sim)
        # an empty cluster counts as one sample of its mean, so the EMA ratio embed_avg / cluster_size stays its mean
        cluster_sizes = cluster_sizes.clamp(min=1)
        _broadcast_from_first_rank(means)
        _broadcast_from_first_rank(cluster_sizes)
        overflowed = torch.tensor(float(not bool(torch.isfinite(means).all())), device=means.device)
        if _all_reduce_sum(overflowed).item() > 0:
            logger.warning("k-means codebook init postponed: the means of the batch overflow float32")
            return
        self.embed.data.copy_(means)
        self.cluster_size.copy_(cluster_sizes)
        if self.ema_update:
            self.embed_avg.copy_(means * rearrange(cluster_sizes, "k -> k 1"))
        self.initted.fill_(True)
        logger.info("initialised a codebook of %d codes by k-means on %d vectors", self.codebook_size, flat.shape[0])

    @torch.no_grad()
    def _replace_dead_codes(self, flat: Tensor) -> None:
        # no data-dependent branching: every code gets a candidate replacement, only the dead ones take it; a
        # non-finite candidate is not taken (the code stays dead and gets another candidate next batch)
        replacements = _broadcast_from_first_rank(_sample_vectors(flat, self.codebook_size).contiguous())
        finite = rearrange(torch.isfinite(replacements).all(dim=-1), "k -> k 1")
        dead = rearrange(self.cluster_size < self.threshold_ema_dead_code, "k -> k 1") & finite
        self.embed.data.copy_(torch.where(dead, replacements, self.embed.data.float()))
        self.cluster_size.copy_(torch.where(dead.squeeze(-1), self.threshold_ema_dead_code, self.cluster_size.float()))
        if self.ema_update:
            replaced_avg = replacements * self.threshold_ema_dead_code
            self.embed_avg.copy_(torch.where(dead, replaced_avg, self.embed_avg.float()))

    @torch.no_grad()
    def _update_codebook(self, flat: Tensor, indices: Tensor) -> None:
        # statistics in float32 whatever the buffers' dtype (a model cast to bf16 keeps exact counts)
        # a non-finite vector counts for nothing (weight 0, zero sum) instead of making its code NaN; masking
        # instead of indexing keeps shapes static (no synchronisation, compilable)
        finite = torch.isfinite(flat).all(dim=-1)
        counts = torch.zeros(self.codebook_size, device=flat.device)
        counts.index_add_(0, indices, finite.to(counts.dtype))
        cluster_size = self.cluster_size.float().lerp(_all_reduce_sum(counts), 1 - self.decay)
        if not self.ema_update:
            self.cluster_size.copy_(torch.where(torch.isfinite(cluster_size), cluster_size, self.cluster_size.float()))
            return

        clean = torch.where(rearrange(finite, "n -> n 1"), flat, 0.0)
        embed_sum = flat.new_zeros(self.codebook_size, self.codebook_dim).index_add_(0, indices, clean)
        embed_avg = self.embed_avg.float().lerp(_all_reduce_sum(embed_sum), 1 - self.decay)

        total = cluster_size.sum()
        smoothed_size = (cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        embed = embed_avg / rearrange(smoothed_size, "k -> k 1")
        embed = l2norm(embed) if self.use_cosine_sim else embed

        # last line of defence (finite inputs can still overflow float32, and with decay=0 a batch without finite
        # vectors leaves total = 0): a code whose new statistics are not all finite keeps its old ones
        keep_new = (
            torch.isfinite(cluster_size)
            & torch.isfinite(smoothed_size)
            & (smoothed_size > 0)
            & torch.isfinite(embed_avg).all(dim=-1)
            & torch.isfinite(embed).all(dim=-1)
        )
        keep_new_rows = rearrange(keep_new, "k -> k 1")
        self.cluster_size.copy_(torch.where(keep_new, cluster_size, self.cluster_size.float()))
        self.embed_avg.copy_(torch.where(keep_new_rows, embed_avg, self.embed_avg.float()))
        self.embed.copy_(torch.where(keep_new_rows, embed, self.embed.float()))

    # forward

    def forward(self, x: Tensor) -> QuantizeOutput:
        _check_features(x, self.dim)
        batch = x.shape[0]
        x = self.project_in(x)
        input_dtype = x.dtype

        with torch.autocast(x.device.type, enabled=False):
            flat = rearrange(x, "b n d -> (b n) d").float()
            if self.use_cosine_sim:
                flat = l2norm(flat)

            if self.training:
                detached = flat.detach()
                if self.kmeans_init:
                    self._init_codebook_with_kmeans(detached)
                if self.threshold_ema_dead_code > 0 and detached.shape[0] > 0:
                    self._replace_dead_codes(detached)

            codebook = self.codebook.float()
            indices = _nearest_code_scores(flat.detach(), codebook.detach(), self.use_cosine_sim).argmin(dim=-1)
            quantized = F.embedding(indices, codebook)  # gradient reaches a learnable codebook only

            loss = self.commitment_weight * F.mse_loss(flat, quantized.detach())
            if not self.ema_update:
                loss = loss + F.mse_loss(quantized, flat.detach())
            if self.orthogonal_reg_weight > 0:
                ortho_codes = codebook
                max_codes = self.orthogonal_reg_max_codes
                if max_codes is not None and self.codebook_size > max_codes:
                    ortho_codes = codebook[torch.randperm(self.codebook_size, device=codebook.device)[:max_codes]]
                loss = loss + self.orthogonal_reg_weight * orthogonal_loss(ortho_codes)

            if self.training:
                self._update_codebook(flat.detach(), indices)

            # straight-through: the forward value is the code, the gradient w.r.t. x is the identity
            quantized = flat + (quantized - flat).detach()

        quantized = rearrange(quantized.to(input_dtype), "(b n) d -> b n d", b=batch)
        indices = rearrange(indices, "(b n) -> b n", b=batch)
        return QuantizeOutput(self.project_out(quantized), indices, loss)

    def get_codes_from_indices(self, indices: Tensor) -> Tensor:
        """Code vectors for `indices` of any shape `(...)` -> `(..., dim)`, through the out projection."""
        _check_indices(indices)
        codes = F.embedding(indices.long(), self.codebook.float())
        return self.project_out(codes)


# lookup-free quantization


def _binary_entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), computed stably from logits."""
    p = torch.sigmoid(logits)
    return F.softplus(logits) - p * logits  # = -p log p - (1 - p) log(1 - p)


class LFQ(nn.Module):
    """Lookup-free quantization (MAGVIT-v2, Yu et al. 2023).

    The input is projected to `log2(codebook_size)` dims; each dim is quantized to `+codebook_scale` or
    `-codebook_scale` by its sign, and the code index is the sign pattern read as a binary number (first dim =
    most significant bit). There is no codebook to learn; the loss is
    `commitment_weight * ||z - sg(q)||^2 + entropy_loss_weight * (H[p(code | z)] - diversity_gamma * H[mean p])`
    with `p(code | z) = softmax(2 <z, code> / temperature)` over all codes (in training only: it needs a
    `(tokens, codebook_size)` matrix). It is low for confident assignments that use the whole codebook.
    """

    bit_values: Tensor

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        entropy_loss_weight: float = 0.1,
        commitment_weight: float = 0.25,
        diversity_gamma: float = 1.0,
        codebook_scale: float = 1.0,
        temperature: float = 1.0,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("codebook_size", codebook_size)
        if codebook_size < 2 or codebook_size & (codebook_size - 1) != 0:
            raise ValueError(f"codebook_size: LFQ needs a power of 2 (>= 2), got {codebook_size}")
        check_in_range("entropy_loss_weight", entropy_loss_weight, 0.0, None)
        check_in_range("commitment_weight", commitment_weight, 0.0, None)
        check_in_range("codebook_scale", codebook_scale, 1e-12, None)
        check_in_range("temperature", temperature, 1e-12, None)

        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = int(math.log2(codebook_size))
        self.entropy_loss_weight = entropy_loss_weight
        self.commitment_weight = commitment_weight
        self.diversity_gamma = diversity_gamma
        self.codebook_scale = codebook_scale
        self.temperature = temperature

        self.project_in, self.project_out = _projections(dim, self.codebook_dim)
        self.register_buffer("bit_values", 2 ** torch.arange(self.codebook_dim - 1, -1, -1), persistent=False)

    def bits_to_codes(self, bits: Tensor) -> Tensor:
        return torch.where(bits, self.codebook_scale, -self.codebook_scale)

    def indices_to_bits(self, indices: Tensor) -> Tensor:
        return (rearrange(indices, "... -> ... 1") & self.bit_values) != 0

    def _entropy_loss(self, z: Tensor) -> Tensor:
        # the softmax over all 2^d codes factorises over dims: per-dim Bernoulli with logit 4 * z_i * scale / T
        bit_logits = 4 * z * self.codebook_scale / self.temperature
        per_sample_entropy = _binary_entropy_from_logits(bit_logits).sum(dim=-1).mean()

        # the batch-averaged distribution over codes does not factorise; build it over all codes
        all_codes = self.bits_to_codes(self.indices_to_bits(torch.arange(self.codebook_size, device=z.device)))
        code_logits = 2 * z @ all_codes.float().t() / self.temperature
        mean_probs = code_logits.softmax(dim=-1).mean(dim=0)
        codebook_entropy = -(mean_probs * mean_probs.clamp(min=1e-12).log()).sum()
        return per_sample_entropy - self.diversity_gamma * codebook_entropy

    def forward(self, x: Tensor) -> QuantizeOutput:
        _check_features(x, self.dim)
        batch = x.shape[0]
        x = self.project_in(x)
        input_dtype = x.dtype

        with torch.autocast(x.device.type, enabled=False):
            z = rearrange(x, "b n d -> (b n) d").float()
            positive = z > 0
            quantized = self.bits_to_codes(positive).float()
            indices = (positive.long() * self.bit_values).sum(dim=-1)

            loss = self.commitment_weight * F.mse_loss(z, quantized)
            if self.training and self.entropy_loss_weight > 0:
                loss = loss + self.entropy_loss_weight * self._entropy_loss(z)

            quantized = z + (quantized - z).detach()

        quantized = rearrange(quantized.to(input_dtype), "(b n) d -> b n d", b=batch)
        indices = rearrange(indices, "(b n) -> b n", b=batch)
        return QuantizeOutput(self.project_out(quantized), indices, loss)

    def get_codes_from_indices(self, indices: Tensor) -> Tensor:
        """Codes for `indices (...)` -> `(..., dim)`, through the out projection."""
        _check_indices(indices)
        codes = self.bits_to_codes(self.indices_to_bits(indices.long())).float()
        return self.project_out(codes)


# finite scalar quantization


def _round_straight_through(z: Tensor) -> Tensor:
    return z + (z.round() - z).detach()


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023).

    The input is projected to `len(levels)` dims; dim `i` is squashed by a shifted `tanh` into an interval holding
    exactly `levels[i]` integers, rounded (straight-through), and rescaled to [-1, 1]. The implicit codebook is the
    grid of all combinations, `codebook_size = prod(levels)`; the index is the mixed-radix number of the digits
    (first dim = least significant). Nothing is learned in the quantizer and the loss is 0.
    """

    levels_tensor: Tensor
    basis: Tensor
    half_width: Tensor

    def __init__(self, dim: int, levels: tuple[int, ...] | list[int] = (8, 5, 5, 5), eps: float = 1e-3):
        super().__init__()
        check_positive_int("dim", dim)
        levels = tuple(levels)
        if not levels or any(isinstance(level, bool) or not isinstance(level, int) or level < 2 for level in levels):
            raise ValueError(f"levels: expected a non-empty sequence of ints >= 2, got {levels}")

        self.dim = dim
        self.levels = levels
        self.codebook_dim = len(levels)
        self.codebook_size = math.prod(levels)
        self.eps = eps

        self.project_in, self.project_out = _projections(dim, self.codebook_dim)
        levels_tensor = torch.tensor(levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor((1, *levels[:-1]), dtype=torch.long), dim=0)
        self.register_buffer("levels_tensor", levels_tensor, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("half_width", (levels_tensor // 2), persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        """Squash each dim into (-L/2, L/2) for odd L, shifted by one half for even L, so rounding gives L values."""
        half_l = (self.levels_tensor - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels_tensor % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Normalised codes in [-1, 1] `(..., len(levels))` -> indices `(...)`."""
        digits = (codes * self.half_width + self.half_width).round().long()
        return (digits * self.basis).sum(dim=-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Indices `(...)` -> normalised codes `(..., len(levels))` (before the out projection)."""
        digits = (rearrange(indices, "... -> ... 1") // self.basis) % self.levels_tensor.long()
        return (digits.float() - self.half_width) / self.half_width

    def forward(self, x: Tensor) -> QuantizeOutput:
        _check_features(x, self.dim)
        x = self.project_in(x)
        input_dtype = x.dtype

        with torch.autocast(x.device.type, enabled=False):
            z, packed_shape = pack([x.float()], "* d")
            quantized = _round_straight_through(self.bound(z)) / self.half_width
            indices = self.codes_to_indices(quantized.detach())

        quantized = unpack(quantized.to(input_dtype), packed_shape, "* d")[0]
        indices = unpack(indices, packed_shape, "*")[0]
        loss = torch.zeros((), device=x.device)
        return QuantizeOutput(self.project_out(quantized), indices, loss)

    def get_codes_from_indices(self, indices: Tensor) -> Tensor:
        """Codes for `indices (...)` -> `(..., dim)`, through the out projection."""
        _check_indices(indices)
        return self.project_out(self.indices_to_codes(indices.long()))


def fsq_levels(codebook_size: int, min_level: int = 3, max_level: int = 8) -> tuple[int, ...]:
    """FSQ levels whose product is the smallest one >= `codebook_size`, each in [`min_level`, `max_level`].

    Ties go to fewer dims, then to the most even levels (sorted descending), e.g. 1000 -> (8, 5, 5, 5),
    5000 -> (8, 5, 5, 5, 5), 100 -> (5, 5, 4).
    """
    check_positive_int("codebook_size", codebook_size)
    if codebook_size < 2:
        raise ValueError(f"codebook_size: expected at least 2 codes, got {codebook_size}")
    best_key: tuple[int, int, int] | None = None
    best: tuple[int, ...] | None = None
    max_dims = math.ceil(math.log(codebook_size, min_level)) + 1
    for num_dims in range(1, max_dims + 1):
        for combo in combinations_with_replacement(range(max_level, min_level - 1, -1), num_dims):
            size = math.prod(combo)
            if size < codebook_size:
                continue
            key = (size, num_dims, max(combo) - min(combo))
            if best_key is None or key < best_key:
                best_key, best = key, combo
        if best_key is not None and best_key[0] == codebook_size:
            break  # an exact fit with few dims cannot be beaten by more dims
    if best is None:
        raise ValueError(f"max_level: expected at least min_level={min_level}, got {max_level}")
    return tuple(best)


def make_quantizer(kind: str, dim: int, codebook_size: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a quantizer by name: `'vq'` (VectorQuantize), `'lfq'` (LFQ) or `'fsq'` (FSQ).

    For FSQ the levels are `levels=` when given, else `fsq_levels(codebook_size)` (product >= codebook_size, so
    read the real size from `.codebook_size`). Other keyword arguments go to the quantizer's constructor.
    """
    check_choice("kind", kind, ("vq", "lfq", "fsq"))
    if kind == "fsq":
        levels = kwargs.pop("levels", None)
        if levels is None:
            if codebook_size is None:
                raise ValueError("make_quantizer: kind='fsq' needs codebook_size or levels=")
            levels = fsq_levels(codebook_size)
        return FSQ(dim, levels=levels, **kwargs)
    if codebook_size is None:
        raise ValueError(f"make_quantizer: kind={kind!r} needs codebook_size")
    if kind == "lfq":
        return LFQ(dim, codebook_size, **kwargs)
    return VectorQuantize(dim, codebook_size, **kwargs)
