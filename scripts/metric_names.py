"""The evaluation's metric names, listed once (standard library only, so that tools can read them
without importing torch or MONAI).

A name is ``<metric>_<region>`` for the alpha-matting errors (``sad_unknown`` = SAD inside the
trimap's unknown region, as in the published tables; ``sad_image`` over the whole image) or
``ged`` / ``dice`` for the Probabilistic U-Net's samples against the raters' masks, and
``unc_corr``: the correlation of the uncertainty map with the raters' disagreement (higher is
better), ``qubiq``: the QUBIQ challenge's score (Dice against the raters' mean over the thresholds
0.1 .. 0.9, higher is better), and the case's region sizes ``foreground_pixels`` (raters' mean > 0)
and ``unknown_pixels`` (the trimap's unknown region), which are not errors but tell how large the
region behind SAD / MSE / Grad is. The configs
(through ``scripts.metrics.metric_handlers``), the metrics writer, the cross-validation tables and
the reproduction report all read :data:`METRIC_NAMES`.
"""

__all__ = ["MATTING_METRIC_NAMES", "MATTING_REGIONS", "SAMPLE_METRIC_NAMES", "QUBIQ_METRIC_NAMES", "SIZE_NAMES",
           "METRIC_NAMES"]

#: alpha-matting errors (scripts.metrics.matting)
MATTING_METRIC_NAMES = ("sad", "mse", "grad", "conn")
#: where they are computed: the trimap's unknown region or the whole image
MATTING_REGIONS = ("unknown", "image")
#: metrics of the Prob. U-Net samples (evaluator output ``sample_probs`` against ``masks``)
SAMPLE_METRIC_NAMES = ("ged", "dice", "unc_corr")
#: the QUBIQ challenge's score (scripts.metrics.qubiq)
QUBIQ_METRIC_NAMES = ("qubiq",)
#: per-case region sizes in pixels, reported beside the errors (scripts.metrics.qubiq.RegionSize)
SIZE_NAMES = ("foreground_pixels", "unknown_pixels")
#: every evaluation metric, in report order: the first is the key metric (lower is better)
METRIC_NAMES = (tuple(f"{m}_{r}" for r in MATTING_REGIONS for m in MATTING_METRIC_NAMES) + SAMPLE_METRIC_NAMES
                + QUBIQ_METRIC_NAMES + SIZE_NAMES)
