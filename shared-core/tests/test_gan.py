"""Behaviour of synthesis_core.gan: adversarial losses, gradient penalty and adaptive weight against analytic
values, the discriminator on several sizes (and learning), the perceptual loss against a naive reference,
default_vgg offline."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from synthesis_core.gan import (
    Discriminator,
    LazyPerceptualLoss,
    PerceptualLoss,
    adaptive_generator_weight,
    bce_discr_loss,
    bce_gen_loss,
    default_perceptual_layers,
    default_vgg,
    gradient_penalty,
    hinge_discr_loss,
    hinge_gen_loss,
)


def test_adversarial_losses_analytic():
    fake = torch.tensor([-2.0, 0.5])
    real = torch.tensor([2.0, 0.0])
    # relu(1 + fake) = [0, 1.5] -> 0.75 ; relu(1 - real) = [0, 1] -> 0.5
    torch.testing.assert_close(hinge_discr_loss(fake, real), torch.tensor(1.25))
    torch.testing.assert_close(hinge_gen_loss(fake), torch.tensor(0.75))

    sig = torch.sigmoid
    expected_discr = (-torch.log(1 - sig(fake))).mean() + (-torch.log(sig(real))).mean()
    torch.testing.assert_close(bce_discr_loss(fake, real), expected_discr)
    torch.testing.assert_close(bce_gen_loss(fake), (-torch.log(sig(fake))).mean())
    # stable for large logits
    assert torch.isfinite(bce_discr_loss(torch.tensor([100.0]), torch.tensor([-100.0])))


def test_gradient_penalty_of_linear_discriminator():
    torch.manual_seed(0)
    w = torch.randn(1, 3, 4, 4, requires_grad=True)
    images = torch.randn(5, 3, 4, 4, requires_grad=True)
    output = (images * w).sum(dim=(1, 2, 3))  # gradient w.r.t. each image is w
    penalty = gradient_penalty(images, output, weight=10.0)
    norm = w.detach().norm()
    torch.testing.assert_close(penalty, 10.0 * (norm - 1) ** 2)

    penalty.backward()  # create_graph=True: the penalty trains the discriminator
    torch.testing.assert_close(w.grad, 10.0 * 2 * (norm - 1) * w.detach() / norm)

    with pytest.raises(ValueError, match="requires_grad"):
        gradient_penalty(images.detach(), output)


def test_adaptive_generator_weight_formula():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    last = decoder[-1]
    inputs, target = torch.randn(6, 4), torch.randn(6, 3)
    out = decoder(inputs)
    nll = F.mse_loss(out, target)
    gen = -(out * torch.tensor([1.0, -2.0, 0.5])).mean()

    weight = adaptive_generator_weight(nll, gen, last.weight)
    nll_grad = torch.autograd.grad(nll, last.weight, retain_graph=True)[0]
    gen_grad = torch.autograd.grad(gen, last.weight, retain_graph=True)[0]
    torch.testing.assert_close(weight, nll_grad.norm() / (gen_grad.norm() + 1e-4))
    assert not weight.requires_grad
    torch.testing.assert_close(adaptive_generator_weight(nll, gen, last), weight)  # a module uses its .weight
    torch.testing.assert_close(adaptive_generator_weight(nll, gen, last.weight, max=1e-3), torch.tensor(1e-3))
    # the graph survives for the real backward
    (nll + weight * gen).backward()
    assert last.weight.grad is not None

    with pytest.raises(ValueError, match="gen_loss does not depend on last_layer"):
        adaptive_generator_weight(F.mse_loss(decoder(inputs), target), decoder[0].bias.sum(), last.weight)


@pytest.mark.parametrize("size", [8, 16, 24])
def test_discriminator_sizes(size):
    torch.manual_seed(0)
    discr = Discriminator(dim=8, channels=3, num_layers=3, groups=4)
    images = torch.randn(2, 3, size, size)
    logits = discr(images)
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()
    # one logit per image: batch items do not leak into each other (group norm is per sample)
    torch.testing.assert_close(discr(images[:1]), logits[:1])
    rect = discr(torch.randn(1, 3, size, 2 * size))
    assert rect.shape == (1,)


def test_discriminator_options_and_errors():
    discr = Discriminator(dim=4, channels=1, dims=(4, 8, 8, 16), groups=16, init_kernel_size=3, blur=False)
    assert discr.num_layers == 4 and discr.downsample_factor == 8
    assert discr(torch.randn(1, 1, 16, 16)).shape == (1,)
    with pytest.raises(ValueError, match="divisible by 8"):
        discr(torch.randn(1, 1, 12, 16))
    with pytest.raises(ValueError, match=r"images: expected shape \(batch, 1, height, width\)"):
        discr(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="init_kernel_size"):
        Discriminator(dim=4, init_kernel_size=4)


def test_discriminator_learns_and_takes_gradient_penalty():
    torch.manual_seed(0)
    discr = Discriminator(dim=8, channels=3, num_layers=2, groups=4)
    optimizer = torch.optim.Adam(discr.parameters(), lr=1e-3)
    real = torch.rand(8, 3, 8, 8) * 0.2 + 0.6  # bright, smooth
    fake = torch.rand(8, 3, 8, 8)  # uniform noise
    losses = []
    for _ in range(30):
        images = real.clone().requires_grad_()
        real_logits = discr(images)
        loss = hinge_discr_loss(discr(fake), real_logits) + gradient_penalty(images, real_logits, weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (discr(real) > discr(fake)).all()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(discr(real).float()).all()


# perceptual loss


def tiny_vgg_features():
    return make_layers([4, "M", 8, "M", 8])  # conv relu pool conv relu pool conv relu


def test_default_layers_are_relus_before_pools():
    assert default_perceptual_layers(make_layers(cfgs["D"])) == [3, 8, 15, 22, 29]  # VGG16 .features
    assert default_perceptual_layers(tiny_vgg_features()) == [1, 4]


def test_perceptual_loss_zero_for_identical_and_positive_otherwise():
    torch.manual_seed(0)
    loss_fn = PerceptualLoss(tiny_vgg_features())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    assert loss_fn(x, x).item() == 0
    assert loss_fn(x, y).item() > 0
    per_image = loss_fn(x, y, reduction="none")
    assert per_image.shape == (2,) and (per_image > 0).all()
    torch.testing.assert_close(per_image.mean(), loss_fn(x, y))
    # closer images are closer
    assert loss_fn(x, x + 0.01 * (y - x)) < loss_fn(x, y)


def test_perceptual_loss_matches_naive_reference():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    network = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(5, 4, 1))
    loss_fn = PerceptualLoss(network, layers=[0, 2], value_range=(0.0, 1.0))
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def layer_distance(fx, fy):
        fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        return ((fx - fy) ** 2).sum(dim=1).mean(dim=(1, 2))

    with torch.no_grad():
        nx, ny = (x - mean) / std, (y - mean) / std
        expected = (layer_distance(network[0](nx), network[0](ny)) + layer_distance(network(nx), network(ny))) / 2
    torch.testing.assert_close(loss_fn(x, y, reduction="none"), expected)
    # the same images in [-1, 1] with the default range give the same distance
    default_range = PerceptualLoss(network, layers=[0, 2])
    torch.testing.assert_close(default_range(x * 2 - 1, y * 2 - 1), expected.mean())


def test_perceptual_loss_grayscale_gradients_and_frozen_network():
    torch.manual_seed(0)
    network = tiny_vgg_features()
    loss_fn = PerceptualLoss(network)
    gray, other = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(loss_fn(gray, other), loss_fn(gray.expand(2, 3, 16, 16), other.expand(2, 3, 16, 16)))

    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss_fn(x, torch.rand(2, 3, 16, 16)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in network.parameters())

    loss_fn.train()
    assert loss_fn.training and not loss_fn.network.training

    with pytest.raises(ValueError, match="input: expected 1 .* or 3 channels"):
        loss_fn(torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="target: expected the shape of input"):
        loss_fn(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="at least 2"):
        loss_fn(torch.rand(1, 3, 1, 8), torch.rand(1, 3, 1, 8))  # a pool before the second chosen layer
    with pytest.raises(ValueError, match="layers: expected indices"):
        PerceptualLoss(tiny_vgg_features(), layers=[99])


def test_perceptual_loss_over_any_feature_module():
    # a Sequential without ReLU -> MaxPool stages (nothing to pick): its output is the feature map, like any module
    torch.manual_seed(0)
    conv_stack = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1))
    loss_fn = PerceptualLoss(conv_stack)
    a, b = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    # by hand: unit-normalised features over channels, squared difference summed over channels, mean over positions
    features = conv_stack(loss_fn.normalize(torch.cat((a, b))))
    features = features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
    expected = (features[:2] - features[2:]).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(loss_fn(a, b), expected)
    assert loss_fn(a, a) == 0
    # the distance is the network's: another network gives another one
    other = PerceptualLoss(nn.Sequential(nn.Conv2d(3, 4, 5, padding=2)))
    assert not torch.allclose(other(a, b), loss_fn(a, b))


def test_lazy_perceptual_loss_without_cached_weights_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch cache
    lazy = LazyPerceptualLoss(None, owner="Tokenizer")  # building looks for nothing
    a = torch.rand(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING):
        assert lazy(a, a) is None and lazy(a, a) is None and not lazy.available
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("Tokenizer:") and "vgg=" in messages[0]
    injected = LazyPerceptualLoss(tiny_vgg_features())
    assert injected.available and injected(a, a) == 0
    assert copy.deepcopy(injected) is injected  # copies of the owner (EMA) share the frozen network
    with pytest.raises(TypeError, match="vgg: expected an nn.Module"):
        LazyPerceptualLoss("vgg16")


def test_perceptual_loss_accepts_models_with_features_and_stays_out_of_checkpoints():
    class TinyVGG(nn.Module):  # shaped like torchvision's VGG: a .features Sequential and a classifier
        def __init__(self):
            super().__init__()
            self.features = tiny_vgg_features()
            self.classifier = nn.Linear(8, 10)

    class Owner(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = nn.Conv2d(3, 3, 1)
            self.perceptual = PerceptualLoss(TinyVGG())

    owner = Owner()
    assert owner.perceptual.layers == (1, 4)
    assert list(owner.state_dict()) == ["decoder.weight", "decoder.bias"]
    restored = Owner()
    restored.load_state_dict(owner.state_dict())  # strict load works without the frozen network's weights
    torch.testing.assert_close(restored.decoder.weight, owner.decoder.weight)

    kept = PerceptualLoss(tiny_vgg_features(), save_network=True)
    assert any(key.startswith("network.") for key in kept.state_dict())


def test_default_vgg_gives_clear_error_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError) as error:
        default_vgg()
    message = str(error.value)
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in message
    assert "vgg=" in message and "use_vgg_and_gan=False" in message
    with pytest.raises(ValueError, match="not found"):
        default_vgg(weights_path=tmp_path / "missing.pth")
