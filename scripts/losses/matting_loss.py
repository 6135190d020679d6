"""Training loss of the model: segmentation group (BCE + beta KL) and matting group (L1 + masked gradient).

Paper section 2.4: ``L_seg = L_ce + L_kl`` for the Probabilistic U-Net, ``L_mat = L_mae + L_grad``
for the alpha matte, the gradient loss concentrated where the uncertainty map is high, and the two
groups balanced by the learned homoscedastic uncertainty weighting of Kendall et al. (CVPR 2018).
The weighting and the masked gradient loss are hand-written (no MONAI equivalent); the Sobel filter
uses MONAI's ``separable_filtering`` and the cross-entropy ``torch.nn.functional``.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import separable_filtering

__all__ = ["WEIGHTINGS", "sobel_gradients", "masked_gradient_loss", "transition_region", "MedicalMattingLoss"]

WEIGHTINGS = ("uncertainty", "fixed")


def sobel_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives of (B, C, H, W) images along x (columns) and y (rows), replicate padding.

    The kernels are the separable Sobel pair scaled to a unit-slope derivative: smoothing
    ``[1, 2, 1] / 4`` across, central difference ``[-1, 0, 1] / 2`` along (a ramp of slope 1 gives 1).

    Example::

        >>> ramp = torch.arange(5.0).repeat(1, 1, 5, 1)
        >>> gx, gy = sobel_gradients(ramp)
        >>> gx[0, 0, 2, 2].item(), gy.abs().max().item()
        (1.0, 0.0)
    """
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device) / 4.0
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device) / 2.0
    gx = separable_filtering(x, [smooth, diff], mode="replicate")
    gy = separable_filtering(x, [diff, smooth], mode="replicate")
    return gx, gy


def masked_gradient_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L1 between the Sobel gradients of ``pred`` and ``target``, averaged over the masked pixels.

    ``sum over mask (|dx pred - dx target| + |dy pred - dy target|) / (2 * mask pixels)``; 0 when the
    mask is empty (still attached to the graph).

    Args:
        pred: predicted alpha (B, 1, H, W).
        target: true alpha (B, 1, H, W).
        mask: pixels where the loss applies (B, 1, H, W), bool or {0, 1}; None = every pixel.

    Example::

        >>> a = torch.rand(2, 1, 8, 8)
        >>> masked_gradient_loss(a, a).item()
        0.0
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    px, py = sobel_gradients(pred)
    tx, ty = sobel_gradients(target.to(pred.dtype))
    err = (px - tx).abs() + (py - ty).abs()
    if mask is None:
        return err.mean() / 2.0
    if mask.shape != pred.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of pred {tuple(pred.shape)}.")
    weight = mask.to(pred.dtype)
    return (err * weight).sum() / (2.0 * weight.sum().clamp_min(1.0))


def transition_region(alpha: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels (B, 1, H, W, bool) within ``radius`` pixels (square neighbourhood) of a true alpha strictly
    between 0 and 1: where the raters disagree, the training counterpart of a trimap's unknown region.

    Example::

        >>> a = torch.zeros(1, 1, 8, 8); a[..., 4, 4] = 0.5
        >>> int(transition_region(a, radius=1).sum())
        9
    """
    soft = ((alpha > 0) & (alpha < 1)).to(alpha.dtype)
    if radius > 0:
        soft = F.max_pool2d(soft, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return soft > 0


class MedicalMattingLoss(nn.Module):
    """Total training loss of ``MedicalMattingNet.forward_train`` outputs.

    - segmentation group ``L_seg = BCE-with-logits(seg_logits, seg_target) + kl_weight * mean(kl)``;
    - matting group ``L_mat = mean |alpha - alpha_gt| + grad_weight * L_grad`` (with
      ``l1_transition_weight = w > 0`` the L1 is a weighted mean, weight ``1 + w`` inside
      :func:`transition_region` of the true alpha and 1 elsewhere), ``L_grad`` the L1
      between Sobel gradients (:func:`masked_gradient_loss`) over pixels with
      ``uncertainty > grad_threshold``;
    - ``weighting="uncertainty"`` (default): ``loss = sum_g exp(-s_g) L_g + s_g`` with learnable
      ``s_g = log sigma_g^2`` (``log_var_seg``, ``log_var_mat``, initialised to 0; Kendall et al. 2018)
      -- give ``loss_fn.parameters()`` to the optimiser as well; ``weighting="fixed"``:
      ``loss = seg_weight * L_seg + mat_weight * L_mat``.

    ``forward(out, alpha_gt, seg_target)`` returns a dict of scalar tensors: ``loss`` (to
    back-propagate), ``ce``, ``kl``, ``l1``, ``grad``, ``seg`` and ``mat`` (the group losses),
    ``w_seg`` and ``w_mat`` (the current group weights ``exp(-s_g)`` or the fixed weights, detached).

    Args:
        weighting: ``"uncertainty"`` or ``"fixed"``.
        kl_weight: beta, the weight of the KL term inside the segmentation group.
        grad_weight: weight of the gradient loss inside the matting group.
        grad_threshold: the gradient loss applies where ``uncertainty > grad_threshold``
            (uncertainty is the normalised binary entropy in [0, 1]).
        seg_weight: weight of the segmentation group (``"fixed"`` only).
        mat_weight: weight of the matting group (``"fixed"`` only).
        l1_transition_weight: extra L1 weight of the pixels near the true matte's transition
            (0 = the plain mean, the paper's); the metrics are computed in a trimap's unknown region.

    Example::

        >>> loss_fn = MedicalMattingLoss()
        >>> out = {"alpha": torch.rand(2, 1, 8, 8), "uncertainty": torch.rand(2, 1, 8, 8),
        ...        "seg_logits": torch.randn(2, 1, 8, 8), "kl": torch.rand(2)}
        >>> losses = loss_fn(out, torch.rand(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float())
        >>> sorted(losses)
        ['ce', 'grad', 'kl', 'l1', 'loss', 'mat', 'seg', 'w_mat', 'w_seg']
    """

    def __init__(
        self,
        weighting: str = "uncertainty",
        kl_weight: float = 1.0,
        grad_weight: float = 1.0,
        grad_threshold: float = 0.1,
        seg_weight: float = 1.0,
        mat_weight: float = 1.0,
        l1_transition_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}.")
        for name, value in (("kl_weight", kl_weight), ("grad_weight", grad_weight),
                            ("seg_weight", seg_weight), ("mat_weight", mat_weight),
                            ("l1_transition_weight", l1_transition_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        self.weighting = weighting
        self.kl_weight = float(kl_weight)
        self.grad_weight = float(grad_weight)
        self.grad_threshold = float(grad_threshold)
        self.seg_weight = float(seg_weight)
        self.mat_weight = float(mat_weight)
        self.l1_transition_weight = float(l1_transition_weight)
        if weighting == "uncertainty":
            self.log_var_seg = nn.Parameter(torch.zeros(()))
            self.log_var_mat = nn.Parameter(torch.zeros(()))

    def forward(
        self, out: Mapping[str, torch.Tensor], alpha_gt: torch.Tensor, seg_target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Compute the losses.

        Args:
            out: the ``forward_train`` dict with ``alpha``, ``uncertainty``, ``seg_logits`` (B, 1, H, W)
                and ``kl`` (B,).
            alpha_gt: true alpha (B, 1, H, W) in [0, 1].
            seg_target: binary pseudo ground truth (B, 1, H, W).
        """
        missing = [k for k in ("alpha", "uncertainty", "seg_logits", "kl") if k not in out]
        if missing:
            raise KeyError(f"MedicalMattingLoss: the model output lacks {missing} (got keys {sorted(out)}).")
        alpha, logits = out["alpha"], out["seg_logits"]
        if alpha.shape != alpha_gt.shape:
            raise ValueError(f"predicted alpha {tuple(alpha.shape)} and alpha_gt {tuple(alpha_gt.shape)} differ.")
        if logits.shape != seg_target.shape:
            raise ValueError(f"seg_logits {tuple(logits.shape)} and seg_target {tuple(seg_target.shape)} differ.")
        alpha_gt = alpha_gt.to(alpha.dtype)
        ce = F.binary_cross_entropy_with_logits(logits, seg_target.to(logits.dtype))
        kl = out["kl"].mean()
        if self.l1_transition_weight > 0:
            weight = 1.0 + self.l1_transition_weight * transition_region(alpha_gt).to(alpha.dtype)
            l1 = ((alpha - alpha_gt).abs() * weight).sum() / weight.sum()
        else:
            l1 = (alpha - alpha_gt).abs().mean()
        uncertain = out["uncertainty"].detach() > self.grad_threshold
        grad = masked_gradient_loss(alpha, alpha_gt, uncertain)
        seg = ce + self.kl_weight * kl
        mat = l1 + self.grad_weight * grad
        if self.weighting == "uncertainty":
            w_seg, w_mat = torch.exp(-self.log_var_seg), torch.exp(-self.log_var_mat)
            total = w_seg * seg + self.log_var_seg + w_mat * mat + self.log_var_mat
        else:
            w_seg = torch.tensor(self.seg_weight, dtype=seg.dtype, device=seg.device)
            w_mat = torch.tensor(self.mat_weight, dtype=mat.dtype, device=mat.device)
            total = w_seg * seg + w_mat * mat
        return {
            "loss": total, "ce": ce, "kl": kl, "l1": l1, "grad": grad, "seg": seg, "mat": mat,
            "w_seg": w_seg.detach(), "w_mat": w_mat.detach(),
        }
