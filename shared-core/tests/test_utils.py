"""synthesis_core.utils.frozen: no gradients on the frozen module inside the block, flags restored after."""

import pytest
import torch
from torch import nn

from synthesis_core.utils import frozen


def test_frozen_lets_the_loss_flow_through_but_leaves_no_gradient_on_the_module():
    torch.manual_seed(0)
    generator, critic = nn.Linear(3, 3), nn.Linear(3, 1)
    critic.bias.requires_grad_(False)  # frozen before: must stay frozen after
    with frozen(critic):
        assert not any(p.requires_grad for p in critic.parameters())
        critic(generator(torch.randn(4, 3))).sum().backward()
    assert generator.weight.grad is not None and generator.weight.grad.abs().sum() > 0
    assert critic.weight.grad is None
    assert critic.weight.requires_grad and not critic.bias.requires_grad


def test_frozen_restores_on_error_and_accepts_none():
    module = nn.Linear(2, 2)
    with pytest.raises(RuntimeError):
        with frozen(module):
            raise RuntimeError("boom")
    assert all(p.requires_grad for p in module.parameters())
    with frozen(None):
        pass
