"""Alpha-matting errors SAD, MSE, Grad and Conn of the standard benchmark, as a MONAI metric.

The definitions follow the alpha-matting benchmark of Rhemann et al. (CVPR 2009) as implemented in
the MATLAB evaluation code published with Deep Image Matting (Xu et al., CVPR 2017):
``compute_sad_loss``, ``compute_mse_loss``, ``compute_gradient_loss`` (with ``gaussgradient``)
and ``compute_connectivity_error``. This module is written from those definitions (hand-written:
no library provides them); every choice is listed in ``docs/metrics.md``.

All functions take batch-first tensors of shape (B, 1, H, W) with alpha in [0, 1] and return one
value per image, shape (B,), in float64. Both mattes are first quantised to 8 bits
(:func:`quantize_alpha`), as the published tables were computed on 8-bit PNG files.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction
from scipy import ndimage

from scripts.metric_names import MATTING_METRIC_NAMES, MATTING_REGIONS

__all__ = [
    "MATTING_METRIC_NAMES",
    "MATTING_REGIONS",
    "quantize_alpha",
    "gaussian_gradient_kernel",
    "gaussian_gradient_magnitude",
    "compute_sad",
    "compute_mse",
    "compute_grad",
    "compute_conn",
    "compute_matting_metric",
    "MattingMetric",
]


#: sigma of the Gaussian-derivative filter of the Grad metric (DIM code: ``gaussgradient(pred, 1.4)``)
GRAD_SIGMA = 1.4
#: threshold step and theta of the connectivity error (DIM code: ``step = 0.1`` and ``>= 0.15``)
CONN_STEP_COUNT = 10
CONN_THETA = 0.15


def _check_pair(y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> None:
    if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"y_pred and y must be torch tensors, got {type(y_pred).__name__} and {type(y).__name__}.")
    if y_pred.ndim != 4 or y_pred.shape[1] != 1:
        raise ValueError(f"y_pred must have shape (B, 1, H, W), got {tuple(y_pred.shape)}.")
    if y.shape != y_pred.shape:
        raise ValueError(f"y must have the shape of y_pred {tuple(y_pred.shape)}, got {tuple(y.shape)}.")
    if mask is not None and mask.shape != y_pred.shape:
        raise ValueError(f"mask must have the shape of y_pred {tuple(y_pred.shape)}, got {tuple(mask.shape)}.")


def _region(y_pred: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Boolean region (B, 1, H, W): ``mask`` (anything > 0.5 / True), or every pixel when ``mask`` is None."""
    if mask is None:
        return torch.ones_like(y_pred, dtype=torch.bool)
    if mask.dtype == torch.bool:
        return mask.to(y_pred.device)
    return (mask > 0.5).to(y_pred.device)


def quantize_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """Quantise an alpha matte in [0, 1] to 8 bits: ``floor(clip(alpha, 0, 1) * 255 + 0.5) / 255``.

    Rounds half away from zero like MATLAB's ``uint8`` conversion (``torch.round`` would round half to
    even). Returns float64.

    Args:
        alpha: alpha matte, any shape, values in [0, 1] (values outside are clipped).

    Example::

        >>> quantize_alpha(torch.tensor([0.5, 1.2]))  # 0.5 * 255 = 127.5 -> 128
        tensor([0.5020, 1.0000], dtype=torch.float64)
    """
    return torch.floor(alpha.detach().to(torch.float64).clamp(0.0, 1.0) * 255.0 + 0.5) / 255.0


def compute_sad(y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of absolute differences over the region, divided by 1000 (per image, shape (B,)).

    Args:
        y_pred: predicted alpha (B, 1, H, W) in [0, 1].
        y: true alpha (B, 1, H, W) in [0, 1].
        mask: region (B, 1, H, W) (bool, or > 0.5); None = every pixel.

    Example::

        >>> compute_sad(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        tensor([0.0040], dtype=torch.float64)
    """
    _check_pair(y_pred, y, mask)
    region = _region(y_pred, mask)
    err = (quantize_alpha(y_pred) - quantize_alpha(y)).abs() * region
    return err.sum(dim=(1, 2, 3)) / 1000.0


def compute_mse(y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the region (per image, shape (B,)); 0 where the region is empty.

    The DIM code divides by the number of unknown pixels (0/0 = NaN for an empty region); this
    implementation returns 0 for an empty region instead so that an image without an unknown
    region does not turn the fold mean into NaN.

    Args:
        y_pred: predicted alpha (B, 1, H, W) in [0, 1].
        y: true alpha (B, 1, H, W) in [0, 1].
        mask: region (B, 1, H, W) (bool, or > 0.5); None = every pixel.

    Example::

        >>> compute_mse(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        tensor([1.], dtype=torch.float64)
    """
    _check_pair(y_pred, y, mask)
    region = _region(y_pred, mask)
    err = (quantize_alpha(y_pred) - quantize_alpha(y)) ** 2 * region
    count = region.sum(dim=(1, 2, 3)).to(torch.float64)
    return err.sum(dim=(1, 2, 3)) / count.clamp_min(1.0)


def gaussian_gradient_kernel(sigma: float = GRAD_SIGMA, epsilon: float = 1e-2) -> np.ndarray:
    """The 2-D first-derivative-of-Gaussian kernel ``hx`` of the DIM ``gaussgradient`` (derivative along x).

    ``halfsize = ceil(sigma * sqrt(-2 * log(sqrt(2 pi) * sigma * epsilon)))`` (4 for sigma 1.4),
    ``hx[i, j] = g(i - halfsize) * dg(j - halfsize)`` with ``g(x) = exp(-x^2 / (2 sigma^2)) / (sigma sqrt(2 pi))``
    and ``dg(x) = -x g(x) / sigma^2``, then ``hx / sqrt(sum(hx^2))``. Rows index y, columns x; the
    y-derivative kernel is ``hx.T``.

    Args:
        sigma: standard deviation of the Gaussian.
        epsilon: truncation level of the kernel.

    Example::

        >>> gaussian_gradient_kernel().shape
        (9, 9)
    """
    half = int(math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon))))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(u**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dg = -u * g / sigma**2
    hx = np.outer(g, dg)
    return hx / np.sqrt(np.sum(np.abs(hx) * np.abs(hx)))


def _mat2gray(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation to [0, 1] (MATLAB ``mat2gray``); a constant image becomes zeros."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


def gaussian_gradient_magnitude(x: torch.Tensor, sigma: float = GRAD_SIGMA) -> torch.Tensor:
    """Gradient magnitude ``sqrt(gx^2 + gy^2)`` by the DIM ``gaussgradient`` filters (batched, float64).

    Matches MATLAB ``imfilter(IM, hx, 'replicate', 'conv')``: replicate padding and a true
    convolution (the kernel is flipped before ``conv2d``, which correlates).

    Args:
        x: images (B, 1, H, W).
        sigma: standard deviation of the Gaussian.

    Example::

        >>> gaussian_gradient_magnitude(torch.zeros(2, 1, 8, 8)).abs().max()
        tensor(0., dtype=torch.float64)
    """
    hx = gaussian_gradient_kernel(sigma)
    half = hx.shape[0] // 2
    kx = torch.from_numpy(np.ascontiguousarray(hx[::-1, ::-1])).to(device=x.device, dtype=torch.float64)
    kernels = torch.stack([kx, kx.T.contiguous()])[:, None]  # (2, 1, k, k): x- then y-derivative
    padded = F.pad(x.to(torch.float64), (half, half, half, half), mode="replicate")
    g = F.conv2d(padded, kernels)
    return torch.sqrt(g[:, 0:1] ** 2 + g[:, 1:2] ** 2)


def compute_grad(y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient error: ``sum over region (|grad pred| - |grad gt|)^2 / 1000`` (per image, shape (B,)).

    Both 8-bit mattes are min-max normalised per image (``mat2gray``; a constant image has zero
    gradient whatever the convention) and filtered over the whole image by
    :func:`gaussian_gradient_magnitude` with sigma 1.4; the squared differences are summed over the region.

    Args:
        y_pred: predicted alpha (B, 1, H, W) in [0, 1].
        y: true alpha (B, 1, H, W) in [0, 1].
        mask: region (B, 1, H, W) (bool, or > 0.5); None = every pixel.

    Example::

        >>> ramp = torch.linspace(0, 1, 16).repeat(1, 1, 16, 1)
        >>> compute_grad(ramp, ramp)
        tensor([0.], dtype=torch.float64)
    """
    _check_pair(y_pred, y, mask)
    region = _region(y_pred, mask)
    gp = gaussian_gradient_magnitude(_mat2gray(quantize_alpha(y_pred)))
    gt = gaussian_gradient_magnitude(_mat2gray(quantize_alpha(y)))
    return ((gp - gt) ** 2 * region).sum(dim=(1, 2, 3)) / 1000.0


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a 2-D boolean array (all False when there is none).

    Ties are broken like MATLAB's ``[~, id] = max(size_vec)`` over ``bwconncomp``: the component
    whose first pixel in column-major order comes first wins.
    """
    labels, count = ndimage.label(binary)  # default structure: 4-connectivity in 2-D
    if count == 0:
        return np.zeros_like(binary, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    best = np.flatnonzero(sizes == sizes.max()) + 1
    if best.size > 1:
        ids, first = np.unique(labels.T.ravel(), return_index=True)  # column-major first occurrence
        order = {int(i): int(f) for i, f in zip(ids, first)}
        best = np.array([min(best, key=lambda lab: order[int(lab)])])
    return labels == best[0]


def _connectivity_phi_pair(pred_q: np.ndarray, gt_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """phi maps of the connectivity error for one image; inputs are integer 8-bit levels 0..255."""
    level = -np.ones(pred_q.shape, dtype=np.float64)
    for i in range(1, CONN_STEP_COUNT + 1):
        # alpha >= i / 10 exactly on the 8-bit grid: k / 255 >= i / 10  <=>  10 k >= 255 i
        both = (CONN_STEP_COUNT * pred_q >= 255 * i) & (CONN_STEP_COUNT * gt_q >= 255 * i)
        omega = _largest_component(both)
        level[(level == -1) & ~omega] = (i - 1) / CONN_STEP_COUNT
    level[level == -1] = 1.0
    d_pred = pred_q / 255.0 - level
    d_gt = gt_q / 255.0 - level
    phi_pred = 1.0 - d_pred * (d_pred >= CONN_THETA)
    phi_gt = 1.0 - d_gt * (d_gt >= CONN_THETA)
    return phi_pred, phi_gt


def compute_conn(y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Connectivity error (step 0.1, theta 0.15) summed over the region, divided by 1000 (shape (B,)).

    For thresholds ``t_i = i / 10`` (i = 1..10), ``omega_i`` is the largest 4-connected component
    (``bwconncomp(..., 4)`` in the DIM code; ``scipy.ndimage.label`` here) of
    ``(pred >= t_i) & (gt >= t_i)`` over the whole image. A pixel's level ``l`` is ``t_{i-1}`` for the
    first ``i`` at which it leaves ``omega_i`` (1 if it never does). ``phi = 1 - d * (d >= 0.15)``
    with ``d = alpha - l``; Conn = ``sum over region |phi_pred - phi_gt| / 1000``. Loops over the
    images of the batch on the CPU (NumPy/SciPy); hand-written as no library provides it.

    Args:
        y_pred: predicted alpha (B, 1, H, W) in [0, 1].
        y: true alpha (B, 1, H, W) in [0, 1].
        mask: region (B, 1, H, W) (bool, or > 0.5); None = every pixel.

    Example::

        >>> compute_conn(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
        tensor([0.], dtype=torch.float64)
    """
    _check_pair(y_pred, y, mask)
    region = _region(y_pred, mask).cpu().numpy()
    pred_q = torch.round(quantize_alpha(y_pred) * 255.0).to(torch.int64).cpu().numpy()
    gt_q = torch.round(quantize_alpha(y) * 255.0).to(torch.int64).cpu().numpy()
    values = []
    for b in range(pred_q.shape[0]):
        phi_p, phi_g = _connectivity_phi_pair(pred_q[b, 0], gt_q[b, 0])
        values.append(float(np.sum(np.abs(phi_p - phi_g) * region[b, 0])) / 1000.0)
    return torch.tensor(values, dtype=torch.float64, device=y_pred.device)


_FUNCTIONS = {"sad": compute_sad, "mse": compute_mse, "grad": compute_grad, "conn": compute_conn}


def compute_matting_metric(
    name: str, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Dispatch to :func:`compute_sad`, :func:`compute_mse`, :func:`compute_grad` or :func:`compute_conn`.

    Args:
        name: one of ``"sad"``, ``"mse"``, ``"grad"``, ``"conn"`` (case-insensitive).
        y_pred: predicted alpha (B, 1, H, W) in [0, 1].
        y: true alpha (B, 1, H, W) in [0, 1].
        mask: region (B, 1, H, W); None = every pixel.

    Example::

        >>> compute_matting_metric("sad", torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
        tensor([0.0040], dtype=torch.float64)
    """
    key = name.lower()
    if key not in _FUNCTIONS:
        raise ValueError(f"unknown matting metric {name!r}; expected one of {MATTING_METRIC_NAMES}.")
    return _FUNCTIONS[key](y_pred, y, mask)


class MattingMetric(CumulativeIterationMetric):
    """SAD, MSE, Grad or Conn of the alpha-matting benchmark as a MONAI cumulative metric.

    Each call adds one value per image to the buffer (shape (B, 1)); :meth:`aggregate` reduces them
    (the mean over images by default) and ``get_buffer()`` gives the per-image values.

    Call as ``metric(y_pred, y, mask=unknown)`` with ``y_pred``, ``y`` alpha mattes (B, 1, H, W) in
    [0, 1] and ``mask`` (B, 1, H, W) the region (bool, or > 0.5: the trimap's unknown region); or
    as ``metric(y_pred, y)`` with ``y`` of shape (B, 2, H, W) = [true alpha, region mask], the form
    MONAI's ``IgniteMetricHandler`` can pass (it forwards only ``(y_pred, y)``). Lists of
    channel-first tensors (decollated batches) are accepted too. With ``region="image"`` every
    pixel is used and any mask is ignored.

    Args:
        name: ``"sad"``, ``"mse"``, ``"grad"`` or ``"conn"``.
        region: ``"unknown"`` (the given mask; the default, as in the published tables) or ``"image"``.
        reduction: MONAI reduction of the per-image values in :meth:`aggregate` (default ``"mean"``).
        get_not_nans: whether :meth:`aggregate` also returns the count of non-NaN values.

    Example::

        >>> metric = MattingMetric("sad")
        >>> pred, gt = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
        >>> unknown = torch.ones(2, 1, 8, 8, dtype=torch.bool)
        >>> _ = metric(pred, gt, mask=unknown)
        >>> metric.aggregate()  # mean SAD over the two images
    """

    def __init__(
        self,
        name: str,
        region: str = "unknown",
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        if name.lower() not in MATTING_METRIC_NAMES:
            raise ValueError(f"unknown matting metric {name!r}; expected one of {MATTING_METRIC_NAMES}.")
        if region not in MATTING_REGIONS:
            raise ValueError(f"unknown region {region!r}; expected one of {MATTING_REGIONS}.")
        self.name = name.lower()
        self.region = region
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_list(self, y_pred: Any, y: Any = None, mask: Any = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError(f"MattingMetric({self.name!r}) needs the true alpha y.")
        # mask: None, a batch-first tensor or a list of channel-first tensors, split like y_pred and y
        masks: Sequence[Any] = [None] * len(y_pred) if mask is None else list(mask)
        if not len(y_pred) == len(y) == len(masks):
            raise ValueError(f"y_pred, y and mask lists differ in length: {len(y_pred)}, {len(y)}, {len(masks)}.")
        out = [
            self._compute_tensor(p.unsqueeze(0), t.unsqueeze(0), mask=None if m is None else m.unsqueeze(0))
            for p, t, m in zip(y_pred, y, masks)
        ]
        return torch.cat(out, dim=0)

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, mask: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if y is None:
            raise ValueError(f"MattingMetric({self.name!r}) needs the true alpha y.")
        if y.ndim != 4 or y.shape[1] not in (1, 2):
            raise ValueError(f"y must have shape (B, 1, H, W) or (B, 2, H, W) = [alpha, region], got {tuple(y.shape)}.")
        if y.shape[1] == 2:
            if mask is not None and self.region == "unknown":
                raise ValueError("give the region either as y's second channel or as mask=, not both.")
            y, mask = y[:, 0:1], y[:, 1:2]
        if self.region == "image":
            mask = None
        elif mask is None:
            raise ValueError(
                f"MattingMetric({self.name!r}, region='unknown') needs the unknown region: pass mask= "
                "or y with 2 channels [alpha, region]; use region='image' for every pixel."
            )
        return compute_matting_metric(self.name, y_pred, y, mask).unsqueeze(1)

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the per-image values in the buffer (``reduction`` overrides the constructor's)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"MattingMetric({self.name!r}): nothing to aggregate, call it on some data first.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f
