"""Training losses: segmentation (BCE + KL) and matting (L1 + masked gradient) groups, uncertainty weighting,
and the pseudo ground-truth masks of the segmentation loss."""

from .matting_loss import WEIGHTINGS, MedicalMattingLoss, masked_gradient_loss, sobel_gradients
from .pseudo_ground_truth import (
    PSEUDO_GROUND_TRUTH_MODES,
    pseudo_ground_truth,
    sample_rater_mask,
    threshold_alpha_at_random,
)

__all__ = [
    "WEIGHTINGS",
    "PSEUDO_GROUND_TRUTH_MODES",
    "MedicalMattingLoss",
    "masked_gradient_loss",
    "sobel_gradients",
    "pseudo_ground_truth",
    "sample_rater_mask",
    "threshold_alpha_at_random",
]
