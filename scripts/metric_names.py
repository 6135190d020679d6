"""The evaluation's metric names, listed once (standard library only, so that tools can read them
without importing torch or MONAI).

A name is ``<metric>_<region>`` for the alpha-matting errors (``sad_unknown`` = SAD inside the
trimap's unknown region, as in the published tables; ``sad_image`` over the whole image) or
``ged`` / ``dice`` for the Probabilistic U-Net's samples against the raters' masks, and
``unc_corr``: the correlation of the uncertainty map with the raters' disagreement (higher is
better). The configs
(through ``scripts.metrics.metric_handlers``), the metrics writer, the cross-validation tables and
the reproduction report all read :data:`METRIC_NAMES`.
"""

__all__ = ["MATTING_METRIC_NAMES", "MATTING_REGIONS", "SAMPLE_METRIC_NAMES", "METRIC_NAMES"]

#: alpha-matting errors (scripts.metrics.matting)
MATTING_METRIC_NAMES = ("sad", "mse", "grad", "conn")
#: where they are computed: the trimap's unknown region or the whole image
MATTING_REGIONS = ("unknown", "image")
#: metrics of the Prob. U-Net samples (evaluator output ``sample_probs`` against ``masks``)
SAMPLE_METRIC_NAMES = ("ged", "dice", "unc_corr")
#: every evaluation metric, in report order: the first is the key metric (lower is better)
METRIC_NAMES = tuple(f"{m}_{r}" for r in MATTING_REGIONS for m in MATTING_METRIC_NAMES) + SAMPLE_METRIC_NAMES
