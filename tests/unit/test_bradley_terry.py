"""The Bradley-Terry loss of reward-model training (rlsys/reward_training.py) against numbers
computed by hand, with and without a margin, and the direction of its gradient."""
from __future__ import annotations

import math

import pytest
import torch

from rlsys.reward_training import bradley_terry_loss


def _nls(x: float) -> float:
    """-log sigmoid(x), by hand."""
    return math.log(1.0 + math.exp(-x))


def test_loss_is_mean_negative_log_sigmoid_of_the_score_difference():
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 1.0])
    want = (_nls(1.0) + _nls(0.0) + _nls(-2.0)) / 3  # 0.3133 + 0.6931 + 2.1269
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(want, rel=1e-6)
    assert float(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0]))) == pytest.approx(math.log(2))


def test_margin_is_subtracted_from_the_difference():
    chosen, rejected = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.0])
    margin = torch.tensor([1.0, 0.5])
    want = (_nls(2.0 - 1.0 - 1.0) + _nls(3.0 - 0.0 - 0.5)) / 2
    assert float(bradley_terry_loss(chosen, rejected, margin)) == pytest.approx(want, rel=1e-6)
    # A zero margin is the plain loss; a margin makes the same pair cost more.
    assert float(bradley_terry_loss(chosen, rejected, torch.zeros(2))) == pytest.approx(
        float(bradley_terry_loss(chosen, rejected)))
    assert float(bradley_terry_loss(chosen, rejected, margin)) > float(bradley_terry_loss(chosen, rejected))


def test_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([0.5, -0.3], requires_grad=True)
    rejected = torch.tensor([0.1, 0.4], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected, torch.tensor([0.2, 0.0]))
    assert loss.shape == ()
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected
    # d/dc of -log sigmoid(c - r - m), meaned over N = 2: -(1 - sigmoid(d)) / 2.
    d = torch.tensor([0.5 - 0.1 - 0.2, -0.3 - 0.4])
    assert torch.allclose(chosen.grad, -(1 - torch.sigmoid(d)) / 2)
    assert torch.allclose(rejected.grad, -chosen.grad)
