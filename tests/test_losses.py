"""Tests for pretext.losses against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from pretext.losses import (
    discriminator_loss,
    generator_adversarial_loss,
    joint_loss,
    reconstruction_loss,
    region_weights,
)


def _bool(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool).reshape(1, 1, len(rows), len(rows[0]))


def _nll_sigmoid(z: float) -> float:
    """-log(sigmoid(z)) written out."""
    return -math.log(1.0 / (1.0 + math.exp(-z)))


def test_region_weights_hand_made_4x4() -> None:
    hole = _bool([[0, 0, 0, 0],
                  [0, 1, 1, 0],
                  [0, 1, 1, 0],
                  [0, 0, 0, 0]])
    region = _bool([[1, 1, 1, 0],
                    [1, 1, 1, 0],
                    [1, 1, 1, 0],
                    [0, 0, 0, 0]])
    w = region_weights(hole, region, overlap_weight=10.0)
    expected = torch.tensor([[10, 10, 10, 0],
                             [10, 1, 1, 0],
                             [10, 1, 1, 0],
                             [0, 0, 0, 0]], dtype=torch.float32).reshape(1, 1, 4, 4)
    assert w.dtype == torch.float32
    assert torch.equal(w, expected)
    # a hole pixel outside the region is still weighted 1; overlap_weight is a parameter
    w3 = region_weights(hole, torch.zeros_like(region), overlap_weight=3.0)
    assert torch.equal(w3, hole.float())
    assert torch.equal(region_weights(hole, region, overlap_weight=3.0), torch.where(expected == 10, 3.0, expected))


def test_region_weights_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        region_weights(torch.zeros(1, 1, 4, 4, dtype=torch.bool), torch.zeros(1, 1, 4, 5, dtype=torch.bool))


PRED = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],
                      [[0.0, 1.0], [-2.0, 0.0]]]])  # (1, 2, 2, 2)
WEIGHTS = torch.tensor([[[[1.0, 0.0], [10.0, 1.0]]]])  # (1, 1, 2, 2): 3 weighted pixels


def test_l2_hand_computed() -> None:
    # weighted squared errors: (0,0): 1*(1+0) = 1; (1,0): 10*(9+4) = 130; (1,1): 1*(16+0) = 16 -> 147
    # normaliser: C * #(w > 0) = 2 * 3 = 6
    loss = reconstruction_loss(PRED, torch.zeros_like(PRED), WEIGHTS, "l2")
    assert loss.item() == pytest.approx(147 / 6)


def test_l1_hand_computed() -> None:
    # weighted absolute errors: (0,0): 1*(1+0); (1,0): 10*(3+2); (1,1): 1*(4+0) -> 55; normaliser 6
    loss = reconstruction_loss(PRED, torch.zeros_like(PRED), WEIGHTS, "l1")
    assert loss.item() == pytest.approx(55 / 6)


def test_normaliser_counts_pixels_over_the_whole_batch() -> None:
    pred = torch.ones(2, 3, 2, 2)
    w = torch.zeros(2, 1, 2, 2)
    w[0, 0, 0, 0] = 1.0
    w[1, 0, 1, :] = 2.0
    # sum = 3*1 + 2 pixels * 3 channels * 2 = 15; count = 3 channels * 3 pixels = 9
    assert reconstruction_loss(pred, torch.zeros_like(pred), w).item() == pytest.approx(15 / 9)


def test_zero_error_and_empty_region() -> None:
    target = torch.randn(2, 3, 4, 4)
    assert reconstruction_loss(target.clone(), target, torch.ones(2, 1, 4, 4)).item() == 0.0
    assert reconstruction_loss(target + 1, target, torch.zeros(2, 1, 4, 4)).item() == 0.0


def test_loss_ignores_pixels_outside_the_region() -> None:
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 6, 6, generator=gen), torch.randn(2, 3, 6, 6, generator=gen)
    hole = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    hole[:, :, 2:4, 2:4] = True
    region = torch.zeros_like(hole)
    region[:, :, 1:5, 1:5] = True
    w = region_weights(hole, region)
    changed = pred.clone()
    changed[:, :, 0, :] += 100.0
    changed[:, :, :, 5] -= 50.0
    for kind in ("l2", "l1"):
        base = reconstruction_loss(pred, target, w, kind)
        assert torch.equal(reconstruction_loss(changed, target, w, kind), base)
        inside = pred.clone()
        inside[:, :, 1, 1] += 1.0  # a ring pixel
        assert reconstruction_loss(inside, target, w, kind) != base


def test_loss_gradient_is_weighted() -> None:
    pred = torch.zeros(1, 1, 1, 2, requires_grad=True)
    target = torch.ones(1, 1, 1, 2)
    w = torch.tensor([[[[1.0, 10.0]]]])
    reconstruction_loss(pred, target, w).backward()
    # d/dp of (1*(p0-1)^2 + 10*(p1-1)^2) / 2 at p = 0 -> (-1, -10)
    assert pred.grad.flatten().tolist() == pytest.approx([-1.0, -10.0])


def test_reconstruction_loss_bad_arguments() -> None:
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_loss(x, torch.zeros(1, 3, 4, 5), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_loss(x, x, torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_loss(x, x, torch.ones(1, 1, 3, 4))
    with pytest.raises(ValueError, match="l2 or l1"):
        reconstruction_loss(x, x, torch.ones(1, 1, 4, 4), kind="huber")


def test_discriminator_loss_formula() -> None:
    real, fake = [2.0, -1.0], [0.5, 3.0, -2.0]
    expected = 0.5 * (sum(_nll_sigmoid(z) for z in real) / 2 + sum(_nll_sigmoid(-z) for z in fake) / 3)
    loss = discriminator_loss(torch.tensor(real), torch.tensor(fake))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # logits 0 everywhere: log 2
    assert discriminator_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2), rel=1e-6)


def test_discriminator_loss_low_when_discriminator_is_right() -> None:
    right = discriminator_loss(torch.full((4,), 8.0), torch.full((4,), -8.0))
    wrong = discriminator_loss(torch.full((4,), -8.0), torch.full((4,), 8.0))
    assert right.item() < 1e-3 and wrong.item() > 7.9


def test_generator_adversarial_loss_formula() -> None:
    fake = [0.5, 3.0, -2.0]
    expected = sum(_nll_sigmoid(z) for z in fake) / 3
    assert generator_adversarial_loss(torch.tensor(fake)).item() == pytest.approx(expected, rel=1e-6)


def test_adversarial_losses_accept_half_precision_logits() -> None:
    logits = torch.tensor([1.0, -1.0], dtype=torch.bfloat16)
    loss = generator_adversarial_loss(logits)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((_nll_sigmoid(1.0) + _nll_sigmoid(-1.0)) / 2, rel=1e-6)


def test_joint_loss_split() -> None:
    rec, adv = torch.tensor(2.0), torch.tensor(5.0)
    assert joint_loss(rec, adv, 0.001).item() == pytest.approx(0.999 * 2.0 + 0.001 * 5.0)
    assert joint_loss(rec, adv, 0.5).item() == pytest.approx(3.5)
    assert joint_loss(rec, adv, 0.0) is rec
    assert joint_loss(rec, None, 0.001) is rec
