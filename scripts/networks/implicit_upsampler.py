"""Region-aware implicit function (paper section 2.2, equation 2) as a resolution-free upsampler.

A source feature map of size (h, w) is treated as latent codes placed at the pixel centres of a
continuous 2D domain (LIIF convention: pixel centres, normalised coordinates in [-1, 1],
``align_corners=False``). For each query point ``x_q`` of an arbitrary target grid (Hq, Wq):

1. ``x_q`` is expressed in *source-cell units* (the code of source pixel (i, j) sits at (i, j)).
2. The k x k codes nearest to ``x_q`` are chosen (k = 2: the 4 surrounding codes, LIIF's local
   ensemble; k = 1: the nearest code; k = 3: the 3 x 3 codes around the nearest one).
3. ``mode="region_aware"``: an offset layer ``g_delta`` (a convolution on the source features
   bilinearly interpolated at ``x_q``) predicts 2 * k * k offsets (dy, dx, in source-cell units)
   that move each of the k x k positions. It is zero-initialised, so at initialisation the
   function equals the local ensemble. ``mode="local_ensemble"`` keeps the offsets at 0.
4. Each code is sampled bilinearly from the *original* source map at its (moved) position
   ``x_i`` (``grid_sample``, all k x k samples in one call); the two-layer MLP ``f_theta`` decodes
   ``[z_i, x_q - x_i]``; the k x k decoded values are summed (optionally weighted by LIIF's
   areas, k = 2 only). ``forward`` computes exactly this, faster, by moving the MLP's linear parts
   out of the per-code work (see its docstring); the literal form is the reference of the tests
   (``tests/test_networks_implicit.py``).

Hand-written: no maintained library provides this function (LIIF is a research repository).
Codes are sampled with ``grid_sample``, which gives the same values as the paper's
``deform_conv2d`` route (an identity 1x1 deformable convolution per code) without torchvision.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RegionAwareImplicitUpsampler", "resize_rows"]

_MODES = ("region_aware", "local_ensemble")


def resize_rows(x: torch.Tensor, size: Sequence[int], row_start: int, row_stop: int) -> torch.Tensor:
    """Rows ``[row_start, row_stop)`` of ``F.interpolate(x, size, mode="bilinear", align_corners=False)``.

    Computed from the two source rows each target row needs (same weights as PyTorch: source
    coordinate ``(i + 0.5) * h / H - 0.5`` clamped at 0), then resized along the width only, so
    memory scales with the band, not with ``size``. Equal to the whole resize up to float rounding.

    Args:
        x: (B, C, h, w).
        size: the whole target grid (H, W).
        row_start, row_stop: the band of target rows, ``0 <= row_start < row_stop <= H``.
    """
    h, w = x.shape[-2], x.shape[-1]
    hq, wq = int(size[0]), int(size[1])
    if hq == h:
        band = x[:, :, row_start:row_stop]
    else:
        src = ((torch.arange(row_start, row_stop, dtype=torch.float64) + 0.5) * (h / hq) - 0.5).clamp_min(0.0)
        lower = src.floor().long().clamp_max(h - 1)
        upper = (lower + 1).clamp_max(h - 1)
        weight = (src - lower.to(torch.float64)).to(x.dtype).to(x.device).view(1, 1, -1, 1)
        lower, upper = lower.to(x.device), upper.to(x.device)
        band = x.index_select(2, lower) * (1.0 - weight) + x.index_select(2, upper) * weight
    if wq != w:
        band = F.interpolate(band, size=[band.shape[-2], wq], mode="bilinear", align_corners=False)
    return band


class _ReluSumOverCodes(torch.autograd.Function):
    """``relu(sampled + query_term).sum(dim=2)`` for (B, C, K, Hq, Wq) and (C, Hq, Wq), with a lean graph.

    The same values and gradients as autograd's graph of the three ops, with less memory traffic
    (a micro-benchmark of the full-resolution decoder, batch 4 at 128 x 128, bfloat16, 1 thread:
    forward + backward 162 ms before the coordinate folding, 112 ms with it and this function,
    docs/benchmarks.md): the add is done per code
    (PyTorch's broadcasting add over the middle dimension was ~2.5x slower in a micro-benchmark),
    the ReLU in place on the fresh sum, the backward runs the ReLU's backward once on the sum's
    broadcast gradient, and ``query_term``'s gradient is reduced over the codes before the batch.
    Hand-written: PyTorch has no fused op for it.
    """

    @staticmethod
    def forward(ctx, sampled: torch.Tensor, query_term: torch.Tensor) -> torch.Tensor:
        hidden = torch.empty_like(sampled, memory_format=torch.contiguous_format)
        for k in range(sampled.shape[2]):
            torch.add(sampled[:, :, k], query_term, out=hidden[:, :, k])
        hidden.relu_()
        ctx.save_for_backward(hidden)
        return hidden.sum(dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (hidden,) = ctx.saved_tensors
        # the gradient comes from a (channels-last) convolution: contiguous first, as ``hidden``
        grad_sampled = torch.ops.aten.threshold_backward(grad.contiguous().unsqueeze(2).expand_as(hidden), hidden, 0)
        grad_query = grad_sampled.sum(dim=2).sum(dim=0) if ctx.needs_input_grad[1] else None
        return grad_sampled, grad_query


class RegionAwareImplicitUpsampler(nn.Module):
    """Decode a feature map at any target grid with the region-aware implicit function.

    Args:
        in_channels: channels C of the source feature map.
        out_channels: channels of the decoded map.
        hidden_channels: hidden width of the two-layer MLP ``f_theta``.
        kernel_size: k, the region is k x k codes (1, 2 or 3; 2 in the paper).
        mode: ``"region_aware"`` (learned offsets) or ``"local_ensemble"`` (offsets fixed at 0).
        area_weighting: weight the k x k decoded values by LIIF's areas instead of summing them
            (only defined for k = 2).
        offset_kernel_size: kernel of the offset convolution ``g_delta`` (odd).

    Example::

        up = RegionAwareImplicitUpsampler(64, 32, hidden_channels=64)
        y = up(torch.rand(2, 64, 32, 32), output_size=(48, 48))   # (2, 32, 48, 48)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        kernel_size: int = 2,
        mode: str = "region_aware",
        area_weighting: bool = False,
        offset_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if kernel_size not in (1, 2, 3):
            raise ValueError(f"kernel_size must be 1, 2 or 3, got {kernel_size}")
        if area_weighting and kernel_size != 2:
            raise ValueError("area_weighting (LIIF areas) is defined for kernel_size=2 only")
        if offset_kernel_size % 2 != 1:
            raise ValueError(f"offset_kernel_size must be odd, got {offset_kernel_size}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.mode = mode
        self.area_weighting = area_weighting
        k2 = kernel_size * kernel_size
        self.offset_conv: Optional[nn.Conv2d] = None
        if mode == "region_aware":
            self.offset_conv = nn.Conv2d(in_channels, 2 * k2, offset_kernel_size, padding=offset_kernel_size // 2)
            nn.init.zeros_(self.offset_conv.weight)
            nn.init.zeros_(self.offset_conv.bias)
        # f_theta: two-layer MLP on [code, relative coordinate], as 1x1 convolutions
        self.mlp = nn.Sequential(
            nn.Conv2d(in_channels + 2, hidden_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1),
        )

    # ----------------------------------------------------------------------------- coordinates
    @staticmethod
    def query_coordinates(
        source_size: List[int],
        output_size: List[int],
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Target pixel centres in source-cell units, shape (Hq, Wq, 2) as (row, col).

        Target pixel j has the normalised centre ``(2j + 1) / Hq - 1``; in source-cell units
        (source pixel i at i) that is ``(j + 0.5) * h / Hq - 0.5``.
        """
        # sizes as they come (no int()): under torch.export they stay symbolic, so the export takes any H, W
        h, w, hq, wq = source_size[0], source_size[1], output_size[0], output_size[1]
        ys = (torch.arange(hq, device=device, dtype=dtype) + 0.5) * (h / hq) - 0.5
        xs = (torch.arange(wq, device=device, dtype=dtype) + 0.5) * (w / wq) - 0.5
        return torch.stack(torch.meshgrid([ys, xs], indexing="ij"), dim=-1)

    def base_positions(self, source_size: List[int], query: torch.Tensor) -> torch.Tensor:
        """Positions of the k x k nearest codes for each query, (k*k, Hq, Wq, 2), integer-valued.

        The first code index per axis is ``floor(u + 1 - k / 2)`` (k = 1: round(u); k = 2: floor(u);
        k = 3: round(u) - 1); codes outside the map are clamped to the border code.
        """
        k = self.kernel_size
        start = torch.floor(query + 1.0 - k / 2.0)  # (Hq, Wq, 2)
        steps = torch.arange(k, device=query.device, dtype=query.dtype)
        dy, dx = torch.meshgrid([steps, steps], indexing="ij")
        shift = torch.stack([dy.flatten(), dx.flatten()], dim=-1)  # (k*k, 2), row-major (00, 01, 10, 11)
        pos = start.unsqueeze(0) + shift[:, None, None, :]
        return self._clamp(pos, source_size)

    @staticmethod
    def _clamp(pos: torch.Tensor, source_size: List[int]) -> torch.Tensor:
        """Keep (row, col) positions on the code grid [0, h - 1] x [0, w - 1]."""
        upper = torch.tensor([source_size[0] - 1, source_size[1] - 1], device=pos.device, dtype=pos.dtype)
        return torch.clamp(pos, min=torch.zeros_like(upper), max=upper)

    def offsets(self, feat: torch.Tensor, output_size: List[int]) -> Optional[torch.Tensor]:
        """Learned offsets (B, k*k, Hq, Wq, 2) as (dy, dx) in source-cell units; ``None`` for local ensemble."""
        offset_conv = self.offset_conv
        if offset_conv is None:
            return None
        up = feat
        size = [output_size[0], output_size[1]]
        if [feat.shape[-2], feat.shape[-1]] != size:
            up = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        off = offset_conv(up)  # (B, 2*k*k, Hq, Wq)
        b, _, hq, wq = off.shape
        return off.view(b, self.kernel_size * self.kernel_size, 2, hq, wq).permute(0, 1, 3, 4, 2)

    def positions(self, feat: torch.Tensor, output_size: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Query points (Hq, Wq, 2) and sampled code positions (B, k*k, Hq, Wq, 2), source-cell units.

        Coordinates are computed in at least float32 (also for half-precision features).
        """
        source_size = [feat.shape[-2], feat.shape[-1]]
        dtype = torch.promote_types(feat.dtype, torch.float32)
        query = self.query_coordinates(source_size, output_size, feat.device, dtype)
        pos = self.base_positions(source_size, query).unsqueeze(0)
        off = self.offsets(feat, output_size)
        if off is None:
            pos = pos.expand(feat.shape[0], -1, -1, -1, -1)
        else:
            pos = self._clamp(pos + off.to(dtype), source_size)
        return query, pos

    # -------------------------------------------------------------------------------- sampling
    @staticmethod
    def _sample_grid_sample(feat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Codes at ``pos`` (B, K, Hq, Wq, 2) with one ``grid_sample`` call -> (B, C, K*Hq, Wq)."""
        b, kk, hq, wq, _ = pos.shape
        h, w = feat.shape[-2:]
        # source-cell units -> normalised coordinates (align_corners=False); grid_sample wants (x, y)
        gy = (2.0 * pos[..., 0] + 1.0) / h - 1.0
        gx = (2.0 * pos[..., 1] + 1.0) / w - 1.0
        grid = torch.stack([gx, gy], dim=-1).reshape(b, kk * hq, wq, 2).to(feat.dtype)
        return F.grid_sample(feat, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # --------------------------------------------------------------------------------- forward
    def _check(self, feat: torch.Tensor, output_size: List[int]) -> Tuple[int, int]:
        if feat.ndim != 4 or feat.shape[1] != self.in_channels:
            raise ValueError(f"expected features (B, {self.in_channels}, h, w), got {feat.shape}")
        if len(output_size) != 2:
            raise ValueError(f"output_size must be two positive ints (Hq, Wq), got {output_size}")
        hq, wq = output_size[0], output_size[1]  # no int(): under torch.export they stay symbolic (any H, W)
        if hq < 1 or wq < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        return hq, wq

    def _sample(self, feat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self._sample_grid_sample(feat, pos)

    def _ensemble_weights(self, rel: torch.Tensor) -> torch.Tensor:
        """LIIF area weights (B, 4, Hq, Wq): each code weighted by the area of the rectangle between
        the query and the diagonally opposite code (order 00, 01, 10, 11 -> opposite is 3 - i).
        A tiny eps per side (not per area) keeps border-clamped / coinciding codes well defined."""
        eps = 1e-6
        area = (rel[..., 0].abs() + eps) * (rel[..., 1].abs() + eps)
        return area.flip(1) / area.sum(dim=1, keepdim=True)

    def forward(self, feat: torch.Tensor, output_size: List[int]) -> torch.Tensor:
        """Decode ``feat`` (B, C, h, w) at the target grid ``output_size`` -> (B, out_channels, Hq, Wq).

        Computes equation (2) (sample each code, run ``f_theta`` on ``[z_i, x_q - x_i]``, sum) with
        exact rewrites of the MLP's linear layers: the
        second layer is applied *after* the sum over the k x k codes (it is linear), and, when the
        hidden width is not larger than C, the first layer's code part ``W_z z + b`` is applied to
        the source map *before* sampling (bilinear sampling is linear with weights summing to 1,
        so the two commute) and fewer channels are sampled.
        """
        hq, wq = self._check(feat, output_size)
        query, pos = self.positions(feat, [hq, wq])
        return self._decode(feat, query, pos)

    def _decode(self, feat: torch.Tensor, query: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s decoding of the queries (Hq, Wq, 2) from codes at ``pos`` (B, k*k, Hq, Wq, 2)."""
        b, c, kk = feat.shape[0], self.in_channels, self.kernel_size * self.kernel_size
        hq, wq = query.shape[0], query.shape[1]
        first, second = self.mlp[0], self.mlp[2]
        if self.hidden_channels <= c and not self.area_weighting and not torch.jit.is_scripting() and torch.is_grad_enabled():
            # training: the ReLU and the sum over the codes with a leaner backward (see _ReluSumOverCodes)
            hidden = self._relu_sum_first_layer(feat, query, pos)  # (B, hidden, Hq, Wq)
        else:
            rel = query - pos  # (B, K, Hq, Wq, 2): x_q - x_i in source-cell units
            if self.hidden_channels <= c:  # project, then sample the (narrower) hidden features
                hidden = self._sample_first_layer(feat, query, pos)  # (B, hidden, K, Hq, Wq)
            else:  # sample the codes, then the first layer on [z_i, x_q - x_i]
                rel_map = rel.permute(0, 4, 1, 2, 3).reshape(b, 2, kk * hq, wq).to(feat.dtype)
                hidden = F.conv2d(torch.cat([self._sample(feat, pos), rel_map], dim=1), first.weight, first.bias)
                hidden = hidden.view(b, -1, kk, hq, wq)
            hidden = F.relu(hidden, inplace=True)  # (B, hidden, K, Hq, Wq)
            if self.area_weighting:  # weights sum to 1
                hidden = (hidden * self._ensemble_weights(rel).to(hidden.dtype).unsqueeze(1)).sum(dim=2)
            else:
                hidden = hidden.sum(dim=2)
        bias = second.bias
        if bias is not None and not self.area_weighting:  # the second layer's bias, once per summed code
            bias = bias * kk
        # contiguous like ``hidden``; under autocast the convolution casts, else the weight's dtype
        return F.conv2d(hidden.to(second.weight.dtype), second.weight.contiguous(), bias)

    @torch.jit.unused
    def _relu_sum_first_layer(self, feat: torch.Tensor, query: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``relu(first layer).sum over the k x k codes`` -> (B, hidden, Hq, Wq), for training."""
        sampled, query_term = self._sample_first_layer_parts(feat, query, pos)
        return _ReluSumOverCodes.apply(sampled, query_term)

    def _sample_first_layer(self, feat: torch.Tensor, query: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The first MLP layer before its ReLU, ``W_z z_i + W_c (x_q - x_i) + b``, as (B, hidden, K, Hq, Wq).

        Both linear parts are moved out of the per-query work, exactly: bilinear sampling is linear
        with weights summing to 1, and it reproduces a function that is linear in the position, so

        * ``W_z z_i + b`` is the projected source map ``W_z z + b`` sampled at ``x_i``, and
        * ``- W_c x_i`` is the map ``- W_c (i, j)`` (each code's own position) sampled at ``x_i``
          (``x_i`` is clamped onto the code grid, where bilinear interpolation is exact);

        the two are one map of ``hidden`` channels on the source grid, sampled once, and
        ``W_c x_q`` is a (hidden, Hq, Wq) term shared by the batch and the k x k codes. The map is
        kept in at least float32: it holds ``W_c (i, j)`` of the size of the grid, and the
        difference to ``W_c x_q`` must not lose the fraction of a cell.
        """
        sampled, query_term = self._sample_first_layer_parts(feat, query, pos)
        return sampled + query_term.unsqueeze(1)  # (an in-place add on the view costs autograd copies)

    def _sample_first_layer_parts(
        self, feat: torch.Tensor, query: torch.Tensor, pos: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_sample_first_layer` before its sum: the sampled map (B, hidden, K, Hq, Wq) and ``W_c x_q`` (hidden, Hq, Wq)."""
        first = self.mlp[0]
        c, h, w = self.in_channels, feat.shape[-2], feat.shape[-1]
        b, kk, hq, wq = pos.shape[0], pos.shape[1], pos.shape[2], pos.shape[3]
        dtype = torch.promote_types(feat.dtype, torch.float32)
        w_coord = first.weight[:, c:, 0, 0].to(dtype)  # (hidden, 2)
        code_grid = self.query_coordinates([h, w], [h, w], feat.device, dtype)  # (h, w, 2): code (i, j) at (i, j)
        code_term = torch.einsum("oc,hwc->ohw", w_coord, code_grid)
        query_term = torch.einsum("oc,hwc->ohw", w_coord, query.to(dtype)).contiguous()  # (hidden, Hq, Wq)
        projected = F.conv2d(feat, first.weight[:, :c], first.bias)  # (B, hidden, h, w)
        source_map = projected.to(dtype) - code_term  # channels-last like ``feat``; grid_sample copies it
        sampled = self._sample(source_map, pos).view(b, -1, kk, hq, wq)  # contiguous (grid_sample's layout)
        return sampled, query_term

    @torch.jit.ignore
    def forward_rows(self, feat: torch.Tensor, output_size: Sequence[int], row_start: int, row_stop: int) -> torch.Tensor:
        """Rows ``[row_start, row_stop)`` of :meth:`forward` ``(feat, output_size)``, computed alone.

        The per-query tensors then hold ``row_stop - row_start`` rows instead of ``Hq``, so a large
        grid can be decoded in bands of rows with bounded memory (``MattingUNet.decode_rows``).
        The learned offsets come from the offset convolution on the bilinearly resized source
        rows plus a margin of ``offset_kernel_size // 2`` rows (its zero padding stays at the
        grid's border), so the band equals the same rows of the whole decode up to float rounding.
        """
        hq, wq = self._check(feat, list(output_size))
        r0, r1 = max(0, int(row_start)), min(hq, int(row_stop))
        if r0 >= r1:
            raise ValueError(f"empty row range [{row_start}, {row_stop}) of a grid with {hq} rows")
        h, w = feat.shape[-2], feat.shape[-1]
        dtype = torch.promote_types(feat.dtype, torch.float32)
        ys = (torch.arange(r0, r1, device=feat.device, dtype=dtype) + 0.5) * (h / hq) - 0.5
        xs = (torch.arange(wq, device=feat.device, dtype=dtype) + 0.5) * (w / wq) - 0.5
        query = torch.stack(torch.meshgrid([ys, xs], indexing="ij"), dim=-1)
        pos = self.base_positions([h, w], query).unsqueeze(0)
        offset_conv = self.offset_conv
        if offset_conv is None:
            pos = pos.expand(feat.shape[0], -1, -1, -1, -1)
        else:
            margin = offset_conv.padding[0]
            m0, m1 = max(0, r0 - margin), min(hq, r1 + margin)
            off = offset_conv(resize_rows(feat, [hq, wq], m0, m1))[:, :, r0 - m0 : r1 - m0]
            off = off.reshape(feat.shape[0], self.kernel_size * self.kernel_size, 2, r1 - r0, wq).permute(0, 1, 3, 4, 2)
            pos = self._clamp(pos + off.to(dtype), [h, w])
        return self._decode(feat, query, pos)

    @torch.no_grad()
    def sampling_positions(
        self, feat: torch.Tensor, output_size: Sequence[int], query_pixels: torch.Tensor
    ) -> torch.Tensor:
        """Where the codes for chosen target pixels were sampled, for drawing the learned regions.

        Args:
            feat: source features (B, C, h, w).
            output_size: target grid (Hq, Wq).
            query_pixels: (Q, 2) integer (row, col) pixels of the target grid.

        Returns:
            (B, Q, k*k, 2) sampled positions as (row, col) in target-pixel coordinates (pixel
            centres at integers; may be fractional).
        """
        output_size = tuple(int(s) for s in output_size)
        (h, w), (hq, wq) = feat.shape[-2:], output_size
        qp = torch.as_tensor(query_pixels, device=feat.device).long().view(-1, 2)
        if (qp < 0).any() or (qp[:, 0] >= hq).any() or (qp[:, 1] >= wq).any():
            raise ValueError(f"query_pixels must lie inside the target grid {output_size}")
        _, pos = self.positions(feat, output_size)  # (B, K, Hq, Wq, 2)
        sel = pos[:, :, qp[:, 0], qp[:, 1], :].permute(0, 2, 1, 3)  # (B, Q, K, 2)
        scale = torch.tensor([hq / h, wq / w], device=feat.device, dtype=feat.dtype)
        return (sel + 0.5) * scale - 0.5
