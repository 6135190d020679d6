"""Evaluation metrics: alpha-matting errors (SAD, MSE, Grad, Conn), Prob. U-Net sample metrics (GED, Dice), the
QUBIQ score and the per-case region sizes."""

from .matting import (
    MATTING_METRIC_NAMES,
    MATTING_REGIONS,
    MattingMetric,
    compute_conn,
    compute_grad,
    compute_matting_metric,
    compute_mse,
    compute_sad,
    gaussian_gradient_kernel,
    gaussian_gradient_magnitude,
    quantize_alpha,
)
from .qubiq import QUBIQ_THRESHOLDS, QubiqScore, RegionSize, compute_qubiq_score, compute_region_size
from .handlers import METRIC_NAMES, SAMPLE_METRIC_NAMES, metric_handlers
from .samples import (
    GeneralizedEnergyDistance,
    SampleDiceMetric,
    UncertaintyRaterCorrelation,
    compute_generalized_energy_distance,
    compute_uncertainty_rater_correlation,
    compute_sample_dice,
    pairwise_iou_distance,
)

__all__ = [
    "METRIC_NAMES",
    "SAMPLE_METRIC_NAMES",
    "metric_handlers",
    "MATTING_METRIC_NAMES",
    "MATTING_REGIONS",
    "MattingMetric",
    "QUBIQ_THRESHOLDS",
    "QubiqScore",
    "RegionSize",
    "compute_qubiq_score",
    "compute_region_size",
    "GeneralizedEnergyDistance",
    "SampleDiceMetric",
    "UncertaintyRaterCorrelation",
    "compute_uncertainty_rater_correlation",
    "compute_conn",
    "compute_grad",
    "compute_matting_metric",
    "compute_mse",
    "compute_sad",
    "compute_generalized_energy_distance",
    "compute_sample_dice",
    "gaussian_gradient_kernel",
    "gaussian_gradient_magnitude",
    "pairwise_iou_distance",
    "quantize_alpha",
]
