"""Tests of the training loss (BCE + KL, L1 + masked gradient, weighting) and the pseudo ground truth."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.losses import (
    MedicalMattingLoss,
    masked_gradient_loss,
    pseudo_ground_truth,
    sample_rater_mask,
    sobel_gradients,
    threshold_alpha_at_random,
)


def model_output(seed=0, b=2, size=8, uncertainty=None):
    gen = torch.Generator().manual_seed(seed)
    return {
        "alpha": torch.rand(b, 1, size, size, generator=gen).requires_grad_(),
        "uncertainty": torch.rand(b, 1, size, size, generator=gen) if uncertainty is None else uncertainty,
        "seg_logits": torch.randn(b, 1, size, size, generator=gen).requires_grad_(),
        "kl": torch.rand(b, generator=gen).requires_grad_(),
    }


def test_sobel_unit_slope():
    ramp = torch.arange(6.0).repeat(1, 1, 6, 1) * 0.5
    gx, gy = sobel_gradients(ramp)
    assert torch.allclose(gx[..., 1:-1], torch.full_like(gx[..., 1:-1], 0.5))
    assert gy.abs().max() == 0


def test_gradient_loss_zero_positive_and_masked():
    a = torch.rand(2, 1, 12, 12)
    assert masked_gradient_loss(a, a).item() == 0.0
    b = a.clone()
    b[:, :, :, :4] += 0.3 * torch.rand(2, 1, 12, 4)  # differs in the left third only
    assert masked_gradient_loss(b, a).item() > 0
    right = torch.zeros_like(a, dtype=torch.bool)
    right[..., 7:] = True  # two columns away from any changed pixel: the 3x3 Sobel does not reach
    assert masked_gradient_loss(b, a, right).item() == 0.0
    assert masked_gradient_loss(b, a, ~right).item() > 0
    assert masked_gradient_loss(b, a, torch.zeros_like(right)).item() == 0.0  # empty mask


def test_gradient_loss_hand_value():
    pred = torch.zeros(1, 1, 3, 5)
    gt = torch.arange(5.0).repeat(1, 1, 3, 1)  # slope 1 along x
    mask = torch.zeros(1, 1, 3, 5, dtype=torch.bool)
    mask[..., 2] = True  # interior column: |dx| = 1, |dy| = 0 -> (1 + 0) / 2 per pixel
    assert masked_gradient_loss(pred, gt, mask).item() == pytest.approx(0.5)


def test_l1_hand_example_and_grad_masked_by_uncertainty():
    out = model_output(uncertainty=torch.zeros(1, 1, 2, 2), b=1, size=2)
    out["alpha"] = torch.zeros(1, 1, 2, 2, requires_grad=True)
    gt = torch.zeros(1, 1, 2, 2)
    gt[0, 0, 1, 1] = 1.0
    losses = MedicalMattingLoss(grad_threshold=0.1)(out, gt, torch.zeros(1, 1, 2, 2))
    assert losses["l1"].item() == pytest.approx(0.25)
    assert losses["grad"].item() == 0.0  # uncertainty nowhere above the threshold
    out["uncertainty"] = torch.ones(1, 1, 2, 2)
    assert MedicalMattingLoss(grad_threshold=0.1)(out, gt, torch.zeros(1, 1, 2, 2))["grad"].item() > 0


def test_l1_weighted_near_the_transition_hand_example():
    from scripts.losses.matting_loss import transition_region

    gt = torch.zeros(1, 1, 1, 8)
    gt[..., 0] = 0.5                      # one soft pixel: the transition is columns 0-2 (radius 2)
    assert transition_region(gt).flatten().tolist() == [True] * 3 + [False] * 5
    out = model_output(b=1, size=1)
    out = {k: (v[..., :1, :1].expand(1, 1, 1, 8) if v.ndim == 4 else v) for k, v in out.items()}
    out["alpha"] = torch.zeros(1, 1, 1, 8)
    out["alpha"][..., 7] = 1.0            # error 1 outside the transition, 0.5 at the soft pixel
    plain = MedicalMattingLoss()(out, gt, torch.zeros(1, 1, 1, 8))["l1"].item()
    weighted = MedicalMattingLoss(l1_transition_weight=3.0)(out, gt, torch.zeros(1, 1, 1, 8))["l1"].item()
    assert plain == pytest.approx(1.5 / 8)
    assert weighted == pytest.approx((4 * 0.5 + 1.0) / (3 * 4 + 5))  # weights 4 inside, 1 outside
    with pytest.raises(ValueError, match="l1_transition_weight"):
        MedicalMattingLoss(l1_transition_weight=-1.0)


def hand_bce(logits, target):
    p = torch.sigmoid(logits.double())
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean().item()


def test_uncertainty_weighting_formula_and_gradients():
    loss_fn = MedicalMattingLoss(weighting="uncertainty", kl_weight=0.5, grad_weight=2.0)
    names = {n for n, _ in loss_fn.named_parameters()}
    assert names == {"log_var_seg", "log_var_mat"}
    assert loss_fn.log_var_seg.item() == 0.0 and loss_fn.log_var_mat.item() == 0.0
    with torch.no_grad():
        loss_fn.log_var_seg.fill_(0.5)
        loss_fn.log_var_mat.fill_(-0.3)
    out = model_output(1)
    gen = torch.Generator().manual_seed(2)
    gt = torch.rand(2, 1, 8, 8, generator=gen)
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).float()
    res = loss_fn(out, gt, target)
    ce = hand_bce(out["seg_logits"].detach(), target)
    assert res["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert res["kl"].item() == pytest.approx(out["kl"].detach().mean().item())
    assert res["l1"].item() == pytest.approx((out["alpha"].detach() - gt).abs().mean().item(), rel=1e-6)
    seg = ce + 0.5 * res["kl"].item()
    mat = res["l1"].item() + 2.0 * res["grad"].item()
    expected = math.exp(-0.5) * seg + 0.5 + math.exp(0.3) * mat - 0.3
    assert res["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert res["w_seg"].item() == pytest.approx(math.exp(-0.5)) and not res["w_seg"].requires_grad
    res["loss"].backward()
    assert loss_fn.log_var_seg.grad is not None and loss_fn.log_var_seg.grad.item() != 0
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    assert loss_fn.log_var_seg.grad.item() == pytest.approx(1 - math.exp(-0.5) * seg, rel=1e-5)
    assert loss_fn.log_var_mat.grad.item() == pytest.approx(1 - math.exp(0.3) * mat, rel=1e-5)
    assert out["alpha"].grad is not None and out["seg_logits"].grad is not None


def test_fixed_weighting_is_weighted_sum():
    loss_fn = MedicalMattingLoss(weighting="fixed", seg_weight=0.3, mat_weight=2.0, kl_weight=0.1)
    assert list(loss_fn.parameters()) == []
    out = model_output(3)
    gt = torch.rand(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    res = loss_fn(out, gt, target)
    expected = 0.3 * (res["ce"] + 0.1 * res["kl"]) + 2.0 * (res["l1"] + res["grad"])
    assert res["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert res["w_seg"].item() == pytest.approx(0.3) and res["w_mat"].item() == 2.0
    assert all(v.ndim == 0 for v in res.values())


def test_loss_errors():
    with pytest.raises(ValueError, match="weighting"):
        MedicalMattingLoss(weighting="gradnorm")
    out = model_output()
    with pytest.raises(ValueError, match="differ"):
        MedicalMattingLoss()(out, torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 8, 8))
    del out["kl"]
    with pytest.raises(KeyError, match="kl"):
        MedicalMattingLoss()(out, torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))


def test_sample_rater_mask_picks_one_rater_exactly_and_is_deterministic():
    raters = torch.randint(0, 2, (6, 7, 5, 5), generator=torch.Generator().manual_seed(0)).float()
    picked = sample_rater_mask(raters, torch.Generator().manual_seed(1))
    assert picked.shape == (6, 1, 5, 5) and picked.dtype == raters.dtype
    for b in range(6):
        assert any(torch.equal(picked[b, 0], raters[b, k]) for k in range(7))
    again = sample_rater_mask(raters, torch.Generator().manual_seed(1))
    assert torch.equal(picked, again)
    # over many draws every rater is chosen at least once
    one_hot = torch.eye(7)[None, :, :, None].expand(200, 7, 7, 1)  # rater k = one-hot k
    chosen = sample_rater_mask(one_hot, torch.Generator().manual_seed(2))[:, 0, :, 0].argmax(-1)
    assert set(chosen.tolist()) == set(range(7))


def test_threshold_alpha_at_random_binary_monotone_deterministic():
    alpha = torch.linspace(0, 1, 101).view(1, 1, 1, 101).repeat(8, 1, 3, 1)
    mask = threshold_alpha_at_random(alpha, torch.Generator().manual_seed(0), low=0.2, high=0.7)
    assert mask.shape == alpha.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(mask[alpha < 0.2] == 0) and torch.all(mask[alpha >= 0.7] == 1)
    levels = (mask == 0).sum(dim=(1, 2, 3)) / 3  # number of columns below the level per sample
    assert len(set(levels.tolist())) > 1  # a different level per sample
    assert torch.equal(mask, threshold_alpha_at_random(alpha, torch.Generator().manual_seed(0), 0.2, 0.7))
    assert torch.equal(pseudo_ground_truth("threshold", alpha=alpha, generator=torch.Generator().manual_seed(0),
                                           low=0.2, high=0.7), mask)
    with pytest.raises(ValueError, match="needs the raters"):
        pseudo_ground_truth("rater", alpha=alpha)
