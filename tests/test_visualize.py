"""Fold figure and learned-offset figure: files written, sizes, content, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.handlers.fold_figure import save_fold_figure
from tools.visualize import learned_sampling_positions, save_offset_figure


def _rows(n: int, size: int = 32, rgb: bool = False):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    rows = []
    for i in range(n):
        alpha = np.clip((size / 3 - np.hypot(yy - size / 2, xx - size / 2 - i)) / 4, 0, 1)
        image = np.clip(0.2 + 0.6 * alpha + 0.05 * rng.random((size, size)), 0, 1)
        if rgb:
            image = np.stack([image, 0.5 * image, 1 - image], axis=-1)
        rows.append(
            {
                "case": f"case{i:02d}",
                "image": image,
                "alpha_true": alpha,
                "alpha_pred": torch.from_numpy(np.clip(alpha + 0.2 * rng.standard_normal(alpha.shape), 0, 1))[None],
                "uncertainty": np.exp(-((np.hypot(yy - size / 2, xx - size / 2) - size / 3) / 2) ** 2),
                "metrics": {"SAD": 1.5 * i, "MSE": 0.01},
            }
        )
    return rows


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_fold_figure_grows_with_rows_and_respects_max_rows(tmp_path):
    two = _png(save_fold_figure(_rows(2), tmp_path / "two.png", title="fold 0"))
    four = _png(save_fold_figure(_rows(4, rgb=True), tmp_path / "four.png", title="fold 1"))
    capped = _png(save_fold_figure(_rows(6), tmp_path / "capped.png", max_rows=2))
    assert (tmp_path / "two.png").stat().st_size > 20_000
    assert two.shape[1] == four.shape[1] > 900  # five columns
    assert four.shape[0] > two.shape[0] + 300  # each row adds height
    assert abs(capped.shape[0] - two.shape[0]) < 40  # only 2 of 6 rows drawn
    # colour maps present: magma / inferno give strongly non-grey pixels, the image column grey ones
    spread = two.max(axis=2).astype(int) - two.min(axis=2).astype(int)
    assert (spread > 100).sum() > 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capped.png", "four.png", "two.png"]  # no temp files


def test_fold_figure_errors(tmp_path):
    rows = _rows(1)
    with pytest.raises(ValueError, match="at least one row"):
        save_fold_figure([], tmp_path / "f.png")
    bad = dict(rows[0], alpha_pred=np.zeros((16, 16)))
    with pytest.raises(ValueError, match="case00: alpha_true .* same shape"):
        save_fold_figure([bad], tmp_path / "f.png")
    bad = dict(rows[0], uncertainty=rows[0]["uncertainty"] * 3)
    with pytest.raises(ValueError, match=r"case00: uncertainty must lie in \[0, 1\]"):
        save_fold_figure([bad], tmp_path / "f.png")
    bad = {k: v for k, v in rows[0].items() if k != "alpha_true"}
    with pytest.raises(ValueError, match="alpha_true is missing"):
        save_fold_figure([bad], tmp_path / "f.png")
    assert not any(tmp_path.iterdir())


def _red_pixels(rgb: np.ndarray) -> int:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((r > 200) & (g < 60) & (b < 60)).sum())


def test_offset_figure_draws_red_sampling_points(tmp_path):
    image = _rows(1, size=40)[0]["image"]
    queries = np.array([[10, 12], [20, 20], [30, 25]])
    spread = np.array([[-0.8, -0.6], [-0.7, 1.1], [1.2, -0.5], [0.9, 0.8]])
    positions = queries[:, None, :] + spread[None]  # (Q, 4, 2)
    with_points = _png(save_offset_figure(image, queries, positions, tmp_path / "off.png", title="offsets"))
    assert with_points.shape[0] > 300 and with_points.shape[1] > 600
    assert _red_pixels(with_points) > 100
    assert _red_pixels(_png(save_fold_figure(_rows(1, size=40), tmp_path / "nored.png"))) < _red_pixels(with_points)
    with pytest.raises(ValueError, match="sampled_positions must be"):
        save_offset_figure(image, queries, positions[:2], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="query_points must be"):
        save_offset_figure(image, queries[:, :1], positions, tmp_path / "bad.png")


def test_learned_sampling_positions_of_a_network(tmp_path, tiny_net):
    net = tiny_net
    image = torch.rand(1, 1, 32, 32)
    queries = torch.tensor([[9, 9], [16, 21]])
    pos, grid = learned_sampling_positions(net, image, queries)
    assert grid == (32, 32) and tuple(pos.shape) == (2, 4, 2)
    # zero-initialised offsets: the 2 x 2 codes of the 16 x 16 source grid around each query,
    # i.e. source cells floor(u), floor(u) + 1 with u = (q + 0.5) / 2 - 0.5, in target pixels
    for q, p in zip(queries.tolist(), pos):
        for axis in range(2):
            u = (q[axis] + 0.5) / 2 - 0.5
            cells = np.array([np.floor(u), np.floor(u) + 1])
            assert sorted(set(np.round(p[:, axis].numpy(), 5))) == sorted((cells + 0.5) * 2 - 0.5)
    # learned offsets move them
    with torch.no_grad():
        net.matting_unet.implicit_upsamplers()["up2"].offset_conv.bias.fill_(0.25)
    moved, _ = learned_sampling_positions(net, image, queries)
    np.testing.assert_allclose((moved - pos).numpy(), 0.5, atol=1e-5)  # 0.25 source cells = 0.5 target pixels
    save_offset_figure(image[0, 0], queries, moved, tmp_path / "net.png", grid_size=grid)
    assert (tmp_path / "net.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="no implicit upsampler 'up1'"):
        learned_sampling_positions(net, image, queries, upsampler="up1")
