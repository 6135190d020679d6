"""Tests of the matting metrics (SAD, MSE, Grad, Conn) against hand values and slow references."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch
from scipy import ndimage

from scripts.metrics import (
    MattingMetric,
    compute_conn,
    compute_grad,
    compute_mse,
    compute_sad,
    gaussian_gradient_kernel,
    quantize_alpha,
)

NAMES = ("sad", "mse", "grad", "conn")
FUNCS = {"sad": compute_sad, "mse": compute_mse, "grad": compute_grad, "conn": compute_conn}


def t(a) -> torch.Tensor:
    """(H, W) array -> (1, 1, H, W) float64 tensor."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64))[None, None]


# ---------------------------------------------------------------- slow per-image references (NumPy, loops)


def ref_kernel(sigma=1.4, eps=1e-2):
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * eps)))
    size = 2 * half + 1
    gauss = lambda x: math.exp(-x * x / (2 * sigma * sigma)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    dgauss = lambda x: -x * gauss(x) / sigma**2  # noqa: E731
    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            hx[i, j] = gauss(i - half) * dgauss(j - half)
    return hx / math.sqrt(float(np.sum(np.abs(hx) * np.abs(hx))))


def ref_quant(a):
    return np.floor(np.clip(a, 0, 1) * 255 + 0.5) / 255


def ref_sad(p, g, m):
    p, g = ref_quant(p), ref_quant(g)
    total = 0.0
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            if m[i, j]:
                total += abs(p[i, j] - g[i, j])
    return total / 1000


def ref_mse(p, g, m):
    p, g = ref_quant(p), ref_quant(g)
    total, n = 0.0, 0
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            if m[i, j]:
                total += (p[i, j] - g[i, j]) ** 2
                n += 1
    return total / n if n else 0.0


def ref_grad(p, g, m):
    hx = ref_kernel()

    def amp(a):
        a = ref_quant(a)
        a = (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)
        gx = ndimage.convolve(a, hx, mode="nearest")  # MATLAB imfilter(..., 'replicate', 'conv')
        gy = ndimage.convolve(a, hx.T, mode="nearest")
        return np.sqrt(gx**2 + gy**2)

    return float(np.sum((amp(p) - amp(g)) ** 2 * m)) / 1000


def ref_largest_cc(b):
    """Largest 4-connected component by BFS; ties -> first pixel in column-major order."""
    h, w = b.shape
    seen = np.zeros_like(b, dtype=bool)
    best, best_key = None, None
    for j in range(w):  # column-major scan
        for i in range(h):
            if b[i, j] and not seen[i, j]:
                comp, queue = [], deque([(i, j)])
                seen[i, j] = True
                while queue:
                    y, x = queue.popleft()
                    comp.append((y, x))
                    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and b[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            queue.append((yy, xx))
                if best is None or len(comp) > best_key:
                    best, best_key = comp, len(comp)
    out = np.zeros_like(b, dtype=bool)
    for y, x in best or []:
        out[y, x] = True
    return out


def ref_conn(p, g, m):
    p, g = ref_quant(p), ref_quant(g)
    level = -np.ones_like(p)
    for i in range(1, 11):
        th, prev = i / 10, (i - 1) / 10
        omega = ref_largest_cc((p >= th - 1e-9) & (g >= th - 1e-9))
        for y in range(p.shape[0]):
            for x in range(p.shape[1]):
                if level[y, x] == -1 and not omega[y, x]:
                    level[y, x] = prev
    level[level == -1] = 1
    total = 0.0
    for y in range(p.shape[0]):
        for x in range(p.shape[1]):
            dp, dg = p[y, x] - level[y, x], g[y, x] - level[y, x]
            php = 1 - dp if dp >= 0.15 else 1.0
            phg = 1 - dg if dg >= 0.15 else 1.0
            if m[y, x]:
                total += abs(php - phg)
    return total / 1000


REFS = {"sad": ref_sad, "mse": ref_mse, "grad": ref_grad, "conn": ref_conn}


def random_mattes(seed, b=3, h=14, w=17):
    rng = np.random.default_rng(seed)
    # smooth blobs so that Conn sees real components, plus noise
    base = ndimage.gaussian_filter(rng.random((b, h, w)), sigma=(0, 2, 2))
    base = (base - base.min()) / (base.max() - base.min())
    pred = np.clip(base + 0.15 * rng.standard_normal((b, h, w)), 0, 1)
    gt = np.clip(base + 0.15 * rng.standard_normal((b, h, w)), 0, 1)
    mask = rng.random((b, h, w)) > 0.4
    return pred, gt, mask


# ---------------------------------------------------------------- hand values


def test_one_pixel_error_sad_mse():
    gt = np.full((5, 6), 0.4)  # 102 / 255 exactly
    pred = gt.copy()
    pred[2, 3] = 0.6  # 153 / 255: error 0.2 exactly on the 8-bit grid
    mask = np.ones((5, 6), dtype=bool)
    m = torch.as_tensor(mask)[None, None]
    assert compute_sad(t(pred), t(gt), m).item() == pytest.approx(0.2 / 1000, abs=1e-15)
    assert compute_mse(t(pred), t(gt), m).item() == pytest.approx(0.2**2 / 30, abs=1e-15)
    # error outside the region does not count
    mask[2, 3] = False
    m = torch.as_tensor(mask)[None, None]
    assert compute_sad(t(pred), t(gt), m).item() == 0.0
    assert compute_mse(t(pred), t(gt), m).item() == 0.0


def test_all_known_trimap_gives_zero_and_all_unknown_equals_image():
    pred, gt, _ = random_mattes(1, b=2)
    p, g = torch.as_tensor(pred)[:, None], torch.as_tensor(gt)[:, None]
    none = torch.zeros_like(p, dtype=torch.bool)
    every = torch.ones_like(p, dtype=torch.bool)
    for name in NAMES:
        assert torch.all(FUNCS[name](p, g, none) == 0), name
        assert torch.all(FUNCS[name](p, g, every) > 0), name
        m_unknown, m_image = MattingMetric(name), MattingMetric(name, region="image")
        assert torch.allclose(m_unknown(p, g, mask=every), m_image(p, g, mask=none)), name
        assert m_unknown.aggregate().item() == pytest.approx(m_image.aggregate().item())


def test_kernel_matches_dim_definition():
    k = gaussian_gradient_kernel(1.4)
    assert k.shape == (9, 9)  # halfsize = ceil(1.4 * sqrt(-2 log(sqrt(2 pi) 1.4 0.01))) = 4
    np.testing.assert_allclose(k, ref_kernel(), rtol=0, atol=1e-15)
    assert np.sum(k * k) == pytest.approx(1.0)


def test_grad_identical_ramps_zero_and_constant_vs_ramp_by_hand():
    ramp = np.tile(np.arange(16) * 17 / 255, (12, 1))  # exact 8-bit ramp 0..1 along x, slope 1/15
    assert compute_grad(t(ramp), t(ramp)).item() == 0.0
    # interior columns 4..11: no border effect of the 9x9 kernel
    mask = np.zeros((12, 16), dtype=bool)
    mask[:, 4:12] = True
    # by hand: for f(x) = s x, conv with g(u) dg(v) / N gives s * sum(g) * sum(v^2 g(v) / sigma^2) / N
    sigma, half = 1.4, 4
    u = np.arange(-half, half + 1)
    g = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dg = -u * g / sigma**2
    norm = math.sqrt(np.sum(g**2) * np.sum(dg**2))
    slope_response = (1 / 15) * g.sum() * np.sum(u**2 * g / sigma**2) / norm
    expected = mask.sum() * slope_response**2 / 1000  # |grad const| = 0 (mat2gray of a constant = 0)
    constant = np.full((12, 16), 0.4)
    m = torch.as_tensor(mask)[None, None]
    assert compute_grad(t(constant), t(ramp), m).item() == pytest.approx(expected, rel=1e-12)
    assert compute_grad(t(ramp), t(constant), m).item() == pytest.approx(expected, rel=1e-12)
    assert expected > 0


def test_grad_is_scale_invariant_by_min_max_normalisation():
    ramp = np.tile(np.arange(16) * 17 / 255, (12, 1))
    half_ramp = np.tile(np.arange(16) * 8 / 255, (12, 1))  # 0..120/255, normalises to 0..1 too
    # identical after mat2gray up to 8-bit rounding of the steps: 8k/120 vs 17k/255 = k/15 exactly
    assert compute_grad(t(half_ramp), t(ramp)).item() == pytest.approx(0.0, abs=1e-20)


def test_conn_hand_examples():
    # gt = [1, 1], pred = [1, 0.6]: both pixels in the component up to t = 0.6 (exact on the 8-bit grid,
    # 153 / 255 >= 0.6); at t = 0.7 pixel 1 leaves -> l = 0.6; pixel 0 never leaves -> l = 1.
    # pixel 1: d_pred = 0 -> phi 1; d_gt = 0.4 -> phi 0.6; Conn = 0.4 / 1000.
    gt, pred = np.array([[1.0, 1.0]]), np.array([[1.0, 0.6]])
    assert compute_conn(t(pred), t(gt)).item() == pytest.approx(0.4 / 1000, abs=1e-12)
    # gt = [1, 1, 1], pred = [1, 0, 1]: two single-pixel components; pixels 1 and 2 get l = 0,
    # pixel 1: phi_pred 1, phi_gt 0 -> Conn = 1 / 1000.
    gt, pred = np.ones((1, 3)), np.array([[1.0, 0.0, 1.0]])
    assert compute_conn(t(pred), t(gt)).item() == pytest.approx(1 / 1000, abs=1e-12)
    assert compute_conn(t(gt), t(gt)).item() == 0.0


def test_quantisation_effect():
    assert quantize_alpha(torch.tensor(0.5)).item() == 128 / 255  # 127.5 rounds half away from zero
    assert quantize_alpha(torch.tensor([-0.2, 1.3])).tolist() == [0.0, 1.0]
    gt = np.full((4, 4), 0.4)
    below_half_step = gt + 0.0015  # < 0.5 / 255: same 8-bit level
    above_half_step = gt + 0.0025  # > 0.5 / 255: next level
    for name in NAMES:
        assert FUNCS[name](t(below_half_step), t(gt)).item() == 0.0, name
    assert compute_sad(t(above_half_step), t(gt)).item() == pytest.approx(16 / 255 / 1000)
    assert compute_mse(t(above_half_step), t(gt)).item() == pytest.approx((1 / 255) ** 2)


@pytest.mark.parametrize("name", NAMES)
def test_batched_matches_slow_reference_range_and_symmetry(name):
    pred, gt, mask = random_mattes(7)
    p, g = torch.as_tensor(pred)[:, None].float(), torch.as_tensor(gt)[:, None].float()
    m = torch.as_tensor(mask)[:, None]
    fast = FUNCS[name](p, g, m)
    assert fast.shape == (3,)
    for b in range(3):
        ref = REFS[name](p[b, 0].double().numpy(), g[b, 0].double().numpy(), mask[b])
        assert fast[b].item() == pytest.approx(ref, rel=1e-9, abs=1e-15), (name, b)
    assert torch.all(fast >= 0)
    assert torch.all(fast > 0)  # the mattes differ inside the region
    torch.testing.assert_close(FUNCS[name](g, p, m), fast, rtol=1e-12, atol=1e-15)  # symmetric


def test_metric_class_forms_agree_and_buffer_per_image():
    pred, gt, mask = random_mattes(3)
    p, g = torch.as_tensor(pred)[:, None], torch.as_tensor(gt)[:, None]
    m = torch.as_tensor(mask)[:, None]
    for name in NAMES:
        expected = FUNCS[name](p, g, m)
        metric = MattingMetric(name)
        metric(p[:2], g[:2], mask=m[:2])  # batch with mask=
        metric(p[2:], torch.cat([g[2:], m[2:].double()], dim=1))  # (B, 2, H, W) form
        buf = metric.get_buffer()
        assert buf.shape == (3, 1)
        torch.testing.assert_close(buf[:, 0], expected)
        assert metric.aggregate().item() == pytest.approx(expected.mean().item(), rel=1e-6)
        listed = MattingMetric(name)
        listed(list(p), [torch.cat([gi, mi.double()]) for gi, mi in zip(g, m)])  # decollated lists
        torch.testing.assert_close(listed.get_buffer()[:, 0], expected)
        metric.reset()
        assert metric.get_buffer() is None


def test_metric_class_errors():
    p = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown matting metric"):
        MattingMetric("psnr")
    with pytest.raises(ValueError, match="region"):
        MattingMetric("sad", region="trimap")
    with pytest.raises(ValueError, match="needs the unknown region"):
        MattingMetric("sad")(p, p)
    with pytest.raises(ValueError, match="shape"):
        MattingMetric("sad")(p, torch.rand(1, 1, 5, 4), mask=torch.ones(1, 1, 4, 4, dtype=torch.bool))


def test_ignite_metric_handler():
    from ignite.engine import Engine
    from monai.handlers import IgniteMetricHandler

    pred, gt, mask = random_mattes(5, b=4)
    p, g = torch.as_tensor(pred)[:, None], torch.as_tensor(gt)[:, None]
    y = torch.cat([g, torch.as_tensor(mask)[:, None].double()], dim=1)
    batches = [(p[:2], y[:2]), (p[2:], y[2:])]
    engine = Engine(lambda e, batch: batch)
    IgniteMetricHandler(metric_fn=MattingMetric("sad")).attach(engine, "sad")
    engine.run(batches, max_epochs=1)
    expected = compute_sad(p, g, torch.as_tensor(mask)[:, None]).mean().item()
    assert engine.state.metrics["sad"] == pytest.approx(expected, rel=1e-6)
