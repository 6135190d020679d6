"""The MONAI metric handlers of the evaluation, built from the metric names of ``scripts/metric_names.py``
(listed there once; re-exported here as ``scripts.metrics.METRIC_NAMES`` for the configs).

Example (bundle config)::

    key_metric: "$scripts.metrics.metric_handlers(scripts.metrics.METRIC_NAMES[:1])"
    additional_metrics: "$scripts.metrics.metric_handlers(scripts.metrics.METRIC_NAMES[1:])"
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.handlers import IgniteMetricHandler, from_engine

from scripts.metric_names import METRIC_NAMES, SAMPLE_METRIC_NAMES

from .matting import MattingMetric
from .qubiq import QubiqScore, RegionSize
from .samples import GeneralizedEnergyDistance, SampleDiceMetric, UncertaintyRaterCorrelation

__all__ = ["METRIC_NAMES", "SAMPLE_METRIC_NAMES", "metric_handlers"]



def metric_handlers(names: Sequence[str], prefix: str = "", save_details: bool = True) -> dict[str, IgniteMetricHandler]:
    """``{prefix + name: IgniteMetricHandler}`` for ``key_val_metric`` / ``additional_metrics`` of an evaluator.

    The matting metrics read ``from_engine(["pred", "label"])`` (alpha, [true alpha, unknown
    region]), the sample metrics ``from_engine(["sample_probs", "masks"])``, ``unc_corr``
    ``from_engine(["uncertainty", "masks"])``, ``qubiq`` and ``foreground_pixels``
    ``from_engine(["pred", "masks"])`` and ``unknown_pixels`` ``from_engine(["pred", "label"])``: the keys of
    ``MattingEvaluator``'s output.

    Args:
        names: entries of :data:`METRIC_NAMES`.
        prefix: prepended to each name (``"val_"`` for validation during training).
        save_details: keep per-image values (``engine.state.metric_details``) for the per-case tables.

    Raises:
        ValueError: a name that is not in :data:`METRIC_NAMES`.
    """
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}; known: {list(METRIC_NAMES)}")
    handlers = {}
    for name in names:
        if name == "ged":
            metric, output = GeneralizedEnergyDistance(), ["sample_probs", "masks"]
        elif name == "dice":
            metric, output = SampleDiceMetric(), ["sample_probs", "masks"]
        elif name == "unc_corr":
            metric, output = UncertaintyRaterCorrelation(), ["uncertainty", "masks"]
        elif name == "qubiq":
            metric, output = QubiqScore(), ["pred", "masks"]
        elif name == "foreground_pixels":
            metric, output = RegionSize("foreground"), ["pred", "masks"]
        elif name == "unknown_pixels":
            metric, output = RegionSize("unknown"), ["pred", "label"]
        else:
            kind, region = name.split("_", 1)
            metric, output = MattingMetric(kind, region=region), ["pred", "label"]
        handlers[prefix + name] = IgniteMetricHandler(
            metric_fn=metric, output_transform=from_engine(output), save_details=save_details
        )
    return handlers
