"""The VQGAN loss kit: adversarial losses, gradient penalty, adaptive generator weight, a StyleGAN-like
discriminator and an LPIPS-style perceptual loss over an injected frozen network.

A typical VQGAN step (Esser et al. 2021), alternating between the autoencoder and the discriminator:

    recon, _, quantizer_loss = autoencoder(images)
    nll = F.mse_loss(recon, images) + perceptual(recon, images)
    gen = hinge_gen_loss(discriminator(recon))
    weight = adaptive_generator_weight(nll, gen, last_layer=autoencoder.decoder_last_conv.weight)
    (nll + quantizer_loss + weight * gen).backward()

    images.requires_grad_()
    real, fake = discriminator(images), discriminator(recon.detach())
    (hinge_discr_loss(fake, real) + gradient_penalty(images, real)).backward()
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from synthesis_core.checks import check_choice, check_positive_int, check_tensor
from synthesis_core.utils import default

logger = logging.getLogger(__name__)

__all__ = [
    "hinge_discr_loss",
    "hinge_gen_loss",
    "bce_discr_loss",
    "bce_gen_loss",
    "gradient_penalty",
    "adaptive_generator_weight",
    "Blur",
    "DiscriminatorBlock",
    "Discriminator",
    "PerceptualLoss",
    "LazyPerceptualLoss",
    "default_perceptual_layers",
    "default_vgg",
    "vgg16_cache_path",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# adversarial losses on discriminator logits (any shape; averaged)


def hinge_discr_loss(fake: Tensor, real: Tensor) -> Tensor:
    """Discriminator hinge loss: `mean(relu(1 + D(fake))) + mean(relu(1 - D(real)))`."""
    return F.relu(1 + fake).mean() + F.relu(1 - real).mean()


def hinge_gen_loss(fake: Tensor) -> Tensor:
    """Generator hinge loss: `-mean(D(fake))`."""
    return -fake.mean()


def bce_discr_loss(fake: Tensor, real: Tensor) -> Tensor:
    """Discriminator non-saturating loss on logits: `-log(1 - sigmoid(fake)) - log(sigmoid(real))`, averaged."""
    return F.softplus(fake).mean() + F.softplus(-real).mean()


def bce_gen_loss(fake: Tensor) -> Tensor:
    """Generator non-saturating loss on logits: `-log(sigmoid(D(fake)))`, averaged."""
    return F.softplus(-fake).mean()


def gradient_penalty(images: Tensor, output: Tensor, weight: float = 10.0) -> Tensor:
    """`weight * mean_i (||d output_i / d images_i|| - 1)^2` (WGAN-GP style, per sample of the batch).

    `images` must have had `requires_grad=True` before the discriminator produced `output` from them. The graph is
    kept (`create_graph=True`) so the penalty itself can be backpropagated into the discriminator.
    """
    check_tensor("images", images, dtype_floating=True)
    check_tensor("output", output, dtype_floating=True)
    if not images.requires_grad or not output.requires_grad:
        raise ValueError(
            "gradient_penalty: call images.requires_grad_() before running the discriminator on them, "
            "so that output depends on images through autograd"
        )
    (grads,) = torch.autograd.grad(
        outputs=output,
        inputs=images,
        grad_outputs=torch.ones_like(output),
        create_graph=True,
        retain_graph=True,
    )
    grads = rearrange(grads.float(), "b ... -> b (...)")
    return weight * (grads.norm(p=2, dim=1) - 1).pow(2).mean()


def adaptive_generator_weight(
    nll_loss: Tensor,
    gen_loss: Tensor,
    last_layer: Tensor | nn.Module,
    max: float = 1e4,
    eps: float = 1e-4,
) -> Tensor:
    """VQGAN's adaptive weight of the generator loss: `||grad_L nll|| / (||grad_L gen|| + eps)`, clamped to
    `[0, max]` and detached, where `L` is the last layer of the decoder (a weight tensor, or a module whose
    `.weight` is used). It balances the two losses at the point where they enter the decoder."""
    if isinstance(last_layer, nn.Module):
        last_layer = last_layer.weight
    last_layer = check_tensor("last_layer", last_layer, dtype_floating=True)
    for name, loss in (("nll_loss", nll_loss), ("gen_loss", gen_loss)):
        check_tensor(name, loss, shape=(), dtype_floating=True)
        if not loss.requires_grad:
            raise ValueError(f"adaptive_generator_weight: {name} has no autograd graph (computed under no_grad?)")

    (nll_grads,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True, allow_unused=True)
    (gen_grads,) = torch.autograd.grad(gen_loss, last_layer, retain_graph=True, allow_unused=True)
    for name, grads in (("nll_loss", nll_grads), ("gen_loss", gen_grads)):
        if grads is None:
            raise ValueError(f"adaptive_generator_weight: {name} does not depend on last_layer")

    weight = nll_grads.float().norm(p=2) / (gen_grads.float().norm(p=2) + eps)
    return weight.clamp(min=0.0, max=max).detach()


# StyleGAN-like discriminator


def _group_count(groups: int, channels: int) -> int:
    """The largest group count <= `groups` that divides `channels` (GroupNorm needs a divisor)."""
    return math.gcd(groups, channels)


class Blur(nn.Module):
    """Depthwise [1, 2, 1] x [1, 2, 1] / 16 low-pass filter (keeps the size): anti-aliasing before striding."""

    kernel: Tensor

    def __init__(self):
        super().__init__()
        kernel_1d = torch.tensor([1.0, 2.0, 1.0])
        kernel = kernel_1d[:, None] * kernel_1d[None, :]
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        kernel = repeat(self.kernel.to(x.dtype), "h w -> c 1 h w", c=channels)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


def _conv_norm_act(dim_in: int, dim_out: int, groups: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2),
        nn.GroupNorm(_group_count(groups, dim_out), dim_out),
        nn.LeakyReLU(0.2),
    )


class DiscriminatorBlock(nn.Module):
    """Residual block: two conv-norm-leaky-relu layers then a (blurred) stride-2 conv, plus a pooled 1x1-conv
    shortcut; the sum is scaled by 1/sqrt(2) to keep the variance (StyleGAN2's residual discriminator)."""

    def __init__(self, dim_in: int, dim_out: int, downsample: bool = True, groups: int = 16, blur: bool = True):
        super().__init__()
        self.net = nn.Sequential(_conv_norm_act(dim_in, dim_out, groups), _conv_norm_act(dim_out, dim_out, groups))
        self.downsample: nn.Module
        self.shortcut: nn.Module
        if downsample:
            self.downsample = nn.Sequential(
                Blur() if blur else nn.Identity(),
                nn.Conv2d(dim_out, dim_out, 3, stride=2, padding=1),
            )
            self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(dim_in, dim_out, 1))
        else:
            self.downsample = nn.Identity()
            self.shortcut = nn.Conv2d(dim_in, dim_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut(x)
        x = self.downsample(self.net(x))
        return (x + residual) * (1 / math.sqrt(2))


class Discriminator(nn.Module):
    """StyleGAN-like residual image discriminator: `(b, channels, h, w) -> (b,)` logits.

    A `init_kernel_size` conv, then `num_layers - 1` downsampling residual blocks through the channel sizes
    `dims` (default `dim * 2**i`, capped at `8 * dim`; passing `dims` sets `num_layers = len(dims)`), a final
    conv and a linear head on the spatially averaged features, so any `h, w` divisible by `2**(num_layers - 1)`
    works.
    """

    def __init__(
        self,
        dim: int = 64,
        channels: int = 3,
        num_layers: int = 4,
        dims: Sequence[int] | None = None,
        groups: int = 16,
        init_kernel_size: int = 5,
        blur: bool = True,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("channels", channels)
        check_positive_int("num_layers", num_layers)
        check_positive_int("groups", groups)
        check_positive_int("init_kernel_size", init_kernel_size)
        if init_kernel_size % 2 == 0:
            raise ValueError(
                f"init_kernel_size: expected an odd kernel size (keeps the image size), got {init_kernel_size}"
            )
        dims = tuple(default(dims, lambda: tuple(min(dim * 2**i, dim * 8) for i in range(num_layers))))
        if not dims:
            raise ValueError("dims: expected at least one channel size")
        for i, layer_dim in enumerate(dims):
            check_positive_int(f"dims[{i}]", layer_dim)

        self.channels = channels
        self.dims = dims
        self.num_layers = len(dims)
        self.downsample_factor = 2 ** (self.num_layers - 1)

        self.to_features = nn.Sequential(
            nn.Conv2d(channels, dims[0], init_kernel_size, padding=init_kernel_size // 2),
            nn.LeakyReLU(0.2),
        )
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(dim_in, dim_out, downsample=True, groups=groups, blur=blur)
            for dim_in, dim_out in zip(dims[:-1], dims[1:])
        )
        self.final = _conv_norm_act(dims[-1], dims[-1], groups)
        self.to_logits = nn.Linear(dims[-1], 1)

    def forward(self, images: Tensor) -> Tensor:
        check_tensor(
            "images",
            images,
            ndim=4,
            shape=("batch", self.channels, "height", "width"),
            names=("batch", "channels", "height", "width"),
            dtype_floating=True,
        )
        height, width = images.shape[-2:]
        if height % self.downsample_factor or width % self.downsample_factor:
            raise ValueError(
                f"images: height and width must be divisible by {self.downsample_factor} "
                f"(2 ** (num_layers - 1) with num_layers={self.num_layers}), got {height}x{width}"
            )
        x = self.to_features(images)
        for block in self.blocks:
            x = block(x)
        x = reduce(self.final(x), "b c h w -> b c", "mean")
        return rearrange(self.to_logits(x), "b 1 -> b")


# LPIPS-style perceptual loss


def default_perceptual_layers(network: nn.Sequential) -> list[int]:
    """Indices of the ReLU layers directly followed by a max-pool in a VGG-style `nn.Sequential`
    (for torchvision VGG16 `.features`: 3, 8, 15, 22, 29), i.e. the last activation of every stage."""
    modules = list(network)
    return [
        index
        for index, (module, next_module) in enumerate(zip(modules[:-1], modules[1:]))
        if isinstance(module, nn.ReLU) and isinstance(next_module, nn.MaxPool2d)
    ]


def _fill_network_weights_before_load(module: PerceptualLoss, state_dict: dict, prefix: str, *args: Any) -> None:
    # the frozen network is left out of saved state dicts; loading one keeps the weights the module already has
    for name, tensor in module.network.state_dict().items():
        state_dict.setdefault(f"{prefix}network.{name}", tensor)


def _drop_network_from_state_dict(module: PerceptualLoss, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    if module.save_network:
        return
    for key in [key for key in state_dict if key.startswith(f"{prefix}network.")]:
        del state_dict[key]


class PerceptualLoss(nn.Module):
    """LPIPS-style distance between two image batches through a frozen feature network.

    For each chosen layer the features of both images are unit-normalised over channels at every position, the
    squared difference is summed over channels and averaged over positions; the result is averaged over layers
    (LPIPS with uniform layer weights). It is 0 for identical images.

    `network`: any module returning a feature map `(b, c, h, w)` or a list of them. For an `nn.Sequential` (e.g.
    `torchvision.models.vgg16(...).features`, or a model with such a `.features`: a whole torchvision VGG is
    accepted) `layers` may pick indices into it; by default every ReLU right before a max-pool, and where there is
    none (e.g. a plain conv stack) the network's output. Another module takes `layers=None`: its output is used. The network is frozen (no grad, always in eval mode, in-place ops turned off) and, unless
    `save_network=True`, left out of `state_dict()` so checkpoints of the models that own this loss stay small.

    Inputs `(b, 3 or 1, h, w)` in `value_range` (default [-1, 1]); grayscale is repeated to 3 channels, then
    ImageNet mean/std normalisation is applied.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        network: nn.Module,
        layers: Sequence[int] | None = None,
        value_range: tuple[float, float] = (-1.0, 1.0),
        save_network: bool = False,
        eps: float = 1e-10,
    ):
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(
                f"network: expected an nn.Module (e.g. torchvision.models.vgg16().features), "
                f"got {type(network).__name__}"
            )
        features = getattr(network, "features", None)
        if isinstance(features, nn.Sequential):
            network = features

        if isinstance(network, nn.Sequential) and layers is None:
            # VGG-style stacks: the last activation of every stage; any other Sequential: its output, like any module
            layers = default_perceptual_layers(network) or None
        if isinstance(network, nn.Sequential) and layers is not None:
            layers = sorted(set(layers))
            for layer in layers:
                if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(network):
                    raise ValueError(f"layers: expected indices in [0, {len(network) - 1}], got {list(layers)}")
        elif layers is not None:
            raise ValueError(
                "layers: only supported for an nn.Sequential network; for another module pass "
                "layers=None and return the feature maps from its forward"
            )
        if len(value_range) != 2 or not value_range[0] < value_range[1]:
            raise ValueError(f"value_range: expected (low, high) with low < high, got {value_range}")

        for module in network.modules():
            if hasattr(module, "inplace"):
                cast(Any, module).inplace = False  # the outputs we keep must not be overwritten by the next layer
        network.requires_grad_(False)
        network.eval()

        self.network = network
        self.layers = None if layers is None else tuple(layers)
        # each max-pool before the last used layer halves the image: smaller images cannot go through
        pools = 0
        if isinstance(network, nn.Sequential) and layers is not None:
            pools = sum(isinstance(m, nn.MaxPool2d) for m in list(network)[: layers[-1] + 1])
        self.min_image_size = 2**pools
        self.value_range = tuple(float(v) for v in value_range)
        self.save_network = save_network
        self.eps = eps
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_state_dict_post_hook(_drop_network_from_state_dict)
        self.register_load_state_dict_pre_hook(_fill_network_weights_before_load)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.network.eval()  # frozen statistics (dropout, batch norm) whatever the owner's mode
        return self

    def _check_images(self, name: str, images: Any) -> Tensor:
        check_tensor(name, images, ndim=4, names=("batch", "channels", "height", "width"), dtype_floating=True)
        if images.shape[1] not in (1, 3):
            raise ValueError(
                f"{name}: expected 1 (grayscale) or 3 channels (batch, channels, height, width), "
                f"got shape {tuple(images.shape)}"
            )
        return images

    def normalize(self, images: Tensor) -> Tensor:
        """Map from `value_range` to ImageNet-normalised RGB."""
        if images.shape[1] == 1:
            images = repeat(images, "b 1 h w -> b c h w", c=3)
        low, high = self.value_range
        images = (images - low) / (high - low)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def features(self, images: Tensor) -> list[Tensor]:
        """The chosen feature maps of already normalised images."""
        if self.layers is None:
            out = self.network(images)
            return list(out) if isinstance(out, (list, tuple)) else [out]
        collected, last = [], self.layers[-1]
        x = images
        # layers are only ever set for an nn.Sequential network (checked in __init__)
        for index, module in enumerate(cast(nn.Sequential, self.network)):
            x = module(x)
            if index in self.layers:
                collected.append(x)
            if index == last:
                break  # later layers do not matter (and may not fit small images)
        return collected

    def forward(self, input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """Distance between `input` and `target` `(b, c, h, w)`: a scalar, or `(b,)` with `reduction='none'`."""
        self._check_images("input", input)
        self._check_images("target", target)
        if input.shape != target.shape:
            raise ValueError(f"target: expected the shape of input {tuple(input.shape)}, got {tuple(target.shape)}")
        check_choice("reduction", reduction, ("mean", "none"))
        if min(input.shape[-2:]) < self.min_image_size:
            raise ValueError(
                f"input: height and width must be at least {self.min_image_size} for the chosen layers "
                f"of the perceptual network, got {tuple(input.shape[-2:])}; pass fewer layers="
            )

        batch = input.shape[0]
        both = self.normalize(torch.cat((input, target)))
        distances = []
        for feature in self.features(both):
            feature = feature.float()
            feature = feature / (feature.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps)
            input_feature, target_feature = feature[:batch], feature[batch:]
            distance = (input_feature - target_feature).pow(2).sum(dim=1)
            distances.append(reduce(distance, "b ... -> b", "mean"))
        per_image = torch.stack(distances).mean(dim=0)
        return per_image.mean() if reduction == "mean" else per_image


def vgg16_cache_path() -> Path:
    """Where torchvision keeps the ImageNet VGG16 weights in the local torch hub cache (no network access)."""
    from torchvision.models import VGG16_Weights

    filename = os.path.basename(urlparse(VGG16_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def default_vgg(weights_path: str | os.PathLike | None = None) -> nn.Module:
    """torchvision VGG16 with ImageNet weights from a local file: `weights_path`, or the torch hub cache.

    Never downloads. Raises a ValueError explaining the alternatives when the weights are not there.
    """
    from torchvision.models import vgg16

    path = Path(weights_path) if weights_path is not None else vgg16_cache_path()
    if not path.is_file():
        raise ValueError(
            f"default_vgg: pretrained VGG16 weights not found at {path} (nothing is downloaded). Either put the "
            "torchvision file there (e.g. run torchvision.models.vgg16(weights='IMAGENET1K_V1') once on a machine "
            "with internet and copy the torch hub cache, or set TORCH_HOME), pass your own network with "
            "vgg=torchvision.models.vgg16(weights=None) or any nn.Sequential feature extractor, "
            "or disable the perceptual and adversarial losses with use_vgg_and_gan=False"
        )
    model = vgg16(weights=None)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)  # restricted loader: tensors only
    model.load_state_dict(state_dict)
    logger.info("loaded VGG16 weights from %s", path)
    return model.eval().requires_grad_(False)


class LazyPerceptualLoss:
    """The perceptual loss of a model that trains with one, resolved at its first use (never at import or build).

    `network`: any module returning feature maps (see `PerceptualLoss`); None means torchvision's pretrained VGG16
    from the local torch hub cache (`default_vgg`: nothing is downloaded). When those weights are not there the
    model trains without the perceptual term, after one warning that says how to enable it; `available` tells.

    Deliberately not an `nn.Module`: the frozen (often pretrained) network stays out of its owner's state dict
    and parameters, follows the inputs' device on use, and copies of the owner (EMA, `copy_for_eval`) share it.
    """

    def __init__(self, network: nn.Module | None = None, owner: str = "model"):
        if network is not None and not isinstance(network, nn.Module):
            raise TypeError(
                f"vgg: expected an nn.Module returning feature maps (or None for the cached pretrained "
                f"VGG16), got {type(network).__name__}"
            )
        self.network = network
        self.owner = owner
        self._loss: PerceptualLoss | None = None
        self._resolved = False

    def __deepcopy__(self, memo: dict) -> LazyPerceptualLoss:
        return self  # frozen and shared: an EMA copy must not hold a second VGG

    def resolve(self) -> PerceptualLoss | None:
        """The `PerceptualLoss`, or None when no network is available (warned about once)."""
        if not self._resolved:
            network = self.network
            if network is None:
                try:
                    network = default_vgg()
                except ValueError:
                    logger.warning(
                        "%s: no pretrained VGG16 weights at %s (nothing is downloaded), so it trains without the "
                        "perceptual loss. To enable it, put torchvision's VGG16 file there (run "
                        "torchvision.models.vgg16(weights='IMAGENET1K_V1') once with internet, or point TORCH_HOME "
                        "at a cache that has it), or pass vgg=<any nn.Module returning feature maps>.",
                        self.owner,
                        vgg16_cache_path(),
                    )
            self._loss = PerceptualLoss(network) if network is not None else None
            self._resolved = True
        return self._loss

    @property
    def available(self) -> bool:
        return self.resolve() is not None

    def __call__(self, input: Tensor, target: Tensor) -> Tensor | None:
        """The perceptual distance of `input` and `target` `(b, c, h, w)` in [-1, 1], or None without a network."""
        loss = self.resolve()
        if loss is None:
            return None
        first_param = next(loss.parameters(), None)
        first_buffer = loss.mean
        if (first_param is not None and first_param.device != input.device) or first_buffer.device != input.device:
            loss.to(input.device)
        return loss(input, target)
