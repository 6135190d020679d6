"""Synthetic matting phantoms: the bundle's built-in default data.

Each case obeys the matting equation ``I = alpha * F + (1 - alpha) * B`` (plus sensor noise):

* **shape**: one lesion whose radius around a jittered centre is a random low-order Fourier series
  of the angle (a smooth, irregular, star-shaped contour) perturbed by smoothed 2-D noise;
* **soft border**: ``alpha`` falls from 1 to 0 across the contour with a smoothstep whose width
  varies around the contour (a random positive Fourier series of the angle; from sub-pixel sharp
  to several pixels soft), then is quantised to uint8;
* **texture**: foreground ``F`` and background ``B`` are constant levels plus Gaussian-smoothed noise
  at two scales (a low-frequency shading and a fine texture); RGB presets use skin and lesion colours;
* **noise**: additive Gaussian noise on the composite;
* **raters**: rater ``k`` thresholds the alpha matte at its own level (spread over 0.15 .. 0.85) after a
  small elastic warp (smoothed random displacement, about one pixel), so raters disagree where the
  border is soft;
* **trimap**: unknown (128) where ``0 < alpha < 255`` or the raters disagree, grown by one pixel
  (:func:`scripts.data.trimaps.trimap_from_annotations`), 255 / 0 elsewhere.

Everything comes from the ``numpy.random.Generator`` passed in, so a seed gives identical bytes.
Hand-written (numpy + scipy.ndimage): no library synthesises matting phantoms.

Example:
    >>> import numpy as np
    >>> case = make_phantom_case(np.random.default_rng(0), "isic")
    >>> case["image"].shape, len(case["masks"]), case["alpha"].dtype
    ((256, 256, 3), 3, dtype('uint8'))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from scripts.data.trimaps import trimap_from_annotations

__all__ = ["PhantomPreset", "PHANTOM_PRESETS", "get_preset", "make_phantom_case", "make_phantom_dataset",
           "phantom_case_names", "iter_phantom_cases"]


@dataclass(frozen=True)
class PhantomPreset:
    """Size, channels and raters of a phantom dataset that mimics a real one.

    Args:
        name: the mimicked dataset.
        spatial_shape: (H, W).
        channels: 1 (grey, stored (H, W)) or 3 (RGB, stored (H, W, 3)).
        raters: number of raters' masks.

    Example:
        >>> PhantomPreset("tiny", (32, 32), 1, 2).raters
        2
    """

    name: str
    spatial_shape: tuple[int, int]
    channels: int
    raters: int


PHANTOM_PRESETS: dict[str, PhantomPreset] = {
    "brain-growth": PhantomPreset("brain-growth", (128, 128), 1, 7),
    "lidc": PhantomPreset("lidc", (128, 128), 1, 4),
    "isic": PhantomPreset("isic", (256, 256), 3, 3),
}


def get_preset(preset: str | PhantomPreset) -> PhantomPreset:
    """Return the preset called ``preset`` (or ``preset`` itself when it is a :class:`PhantomPreset`)."""
    if isinstance(preset, PhantomPreset):
        return preset
    try:
        return PHANTOM_PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown phantom preset '{preset}', choose one of {sorted(PHANTOM_PRESETS)}") from None


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed (periodic, in Fourier space) white noise over the first two axes, zero mean, unit std."""
    noise = rng.standard_normal(shape)
    spectrum = np.fft.rfft2(noise, axes=(0, 1))
    if spectrum.ndim == 3:
        spectrum = np.stack([ndimage.fourier_gaussian(spectrum[..., c], sigma, n=shape[1])
                             for c in range(shape[2])], axis=-1)
    else:
        spectrum = ndimage.fourier_gaussian(spectrum, sigma, n=shape[1])
    field = np.fft.irfft2(spectrum, s=shape[:2], axes=(0, 1))
    return (field - field.mean()) / (field.std() + 1e-12)


def _fourier(rng: np.random.Generator, theta: np.ndarray, orders: range, amplitude: float) -> np.ndarray:
    """Random Fourier series ``sum_k u_k * amplitude / k * cos(k * theta + phi_k)``, ``u_k ~ U(0, 1)``."""
    out = np.zeros_like(theta)
    for k in orders:
        out += rng.uniform(0.0, 1.0) * amplitude / k * np.cos(k * theta + rng.uniform(0.0, 2 * np.pi))
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_phantom_case(rng: np.random.Generator, preset: str | PhantomPreset = "brain-growth") -> dict:
    """Synthesise one phantom case.

    Args:
        rng: the random generator (all randomness comes from it).
        preset: a name in :data:`PHANTOM_PRESETS` or a :class:`PhantomPreset`.

    Returns:
        dict with uint8 ``image`` ((H, W) or (H, W, 3)), ``alpha`` (H, W, 0..255), ``masks`` (list of
        ``raters`` (H, W) arrays with values {0, 1}) and ``trimap`` (H, W, values 0 / 128 / 255).
    """
    p = get_preset(preset)
    h, w = p.spatial_shape
    size = min(h, w)
    scale = size / 128.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    # lesion contour: radius(theta) = r0 * (1 + Fourier series), plus a smooth 2-D perturbation
    cy = h / 2 + rng.uniform(-0.08, 0.08) * h
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    r0 = rng.uniform(0.14, 0.24) * size
    theta = np.arctan2(yy - cy, xx - cx)
    rho = np.hypot(yy - cy, xx - cx)
    radius = r0 * (1.0 + _fourier(rng, theta, range(2, 7), 0.5))
    dist = rho - radius + rng.uniform(0.0, 0.06) * r0 * _smooth_noise(rng, (h, w), 10.0 * scale)

    # border softness varying around the contour: width in pixels, from ~0.5 (sharp) to several pixels
    log_width = np.log(rng.uniform(1.5, 4.5) * scale) + _fourier(rng, theta, range(1, 4), 1.6)
    width = np.clip(np.exp(log_width), 0.5, 0.3 * r0)
    t = np.clip(0.5 - dist / width, 0.0, 1.0)
    alpha = _to_uint8(t * t * (3.0 - 2.0 * t))
    a = alpha.astype(np.float64) / 255.0

    # textured foreground / background, then the matting equation plus sensor noise
    shape = (h, w) if p.channels == 1 else (h, w, p.channels)

    def texture(level: np.ndarray | float, shading: float, fine: float) -> np.ndarray:
        base = shading * _smooth_noise(rng, (h, w), 16.0 * scale) + fine * _smooth_noise(rng, (h, w), 1.5 * scale)
        if p.channels == 1:
            return level + base
        tint = 0.02 * _smooth_noise(rng, shape, 4.0 * scale)  # small per-channel variation
        return np.asarray(level)[None, None, :] + base[..., None] + tint

    if p.channels == 1:
        fg_level, bg_level = rng.uniform(0.55, 0.85), rng.uniform(0.12, 0.40)
    else:
        bg_level = np.array([0.86, 0.68, 0.58]) * rng.uniform(0.9, 1.05)  # skin
        fg_level = np.array([0.48, 0.32, 0.24]) * rng.uniform(0.6, 1.1)  # pigmented lesion
    fg = texture(fg_level, 0.04, 0.06)
    bg = texture(bg_level, 0.07, 0.03)
    a_b = a if p.channels == 1 else a[..., None]
    image = a_b * fg + (1.0 - a_b) * bg + rng.uniform(0.005, 0.025) * rng.standard_normal(shape)
    image = _to_uint8(image)

    # raters: own threshold, small elastic jitter of the matte before thresholding
    levels = np.linspace(0.15, 0.85, p.raters) if p.raters > 1 else np.array([0.5])
    levels = rng.permutation(levels + rng.uniform(-0.04, 0.04, p.raters))
    masks = []
    for level in levels:
        amp = rng.uniform(0.3, 1.2) * scale
        dy = amp * _smooth_noise(rng, (h, w), 12.0 * scale)
        dx = amp * _smooth_noise(rng, (h, w), 12.0 * scale)
        warped = ndimage.map_coordinates(a, [yy + dy, xx + dx], order=1, mode="nearest")
        masks.append((warped > level).astype(np.uint8))

    trimap = trimap_from_annotations(alpha, masks, dilation=1)
    return {"image": image, "alpha": alpha, "masks": masks, "trimap": trimap}


def phantom_case_names(num_cases: int) -> list[str]:
    """``["case001", "case002", ...]``: the names of ``num_cases`` phantom cases (at least 3 digits)."""
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    digits = max(3, len(str(num_cases)))
    return [f"case{i + 1:0{digits}d}" for i in range(num_cases)]


def iter_phantom_cases(num_cases: int, seed: int = 0, preset: str | PhantomPreset = "brain-growth"):
    """Yield ``(name, case)`` for ``num_cases`` phantom cases, one at a time (memory does not grow with the count).

    Case ``i`` draws from the ``i``-th child of ``numpy.random.SeedSequence(seed)`` (made here one by one,
    the same children as ``SeedSequence(seed).spawn(num_cases)``), so case ``i`` does not depend on the
    number of cases.
    """
    names = phantom_case_names(num_cases)
    root = np.random.SeedSequence(seed)
    for i, name in enumerate(names):
        child = np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, i), pool_size=root.pool_size)
        yield name, make_phantom_case(np.random.default_rng(child), preset)


def make_phantom_dataset(num_cases: int, seed: int = 0, preset: str | PhantomPreset = "brain-growth") -> dict:
    """Synthesise ``num_cases`` cases named ``case001`` ...; case ``i`` uses its own child seed of ``seed``.

    Args:
        num_cases: number of cases (>= 1).
        seed: the dataset seed (same seed, same bytes).
        preset: see :func:`make_phantom_case`.

    Returns:
        ``{case: make_phantom_case(...)}`` in case order (:func:`iter_phantom_cases` yields them one by one).
    """
    return dict(iter_phantom_cases(num_cases, seed, preset))
