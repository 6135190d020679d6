"""Matting U-Net with multi-scale region-aware implicit fusion (paper sections 2.1 and 2.2, eq. 3).

Encoder input: the image concatenated with the Probabilistic U-Net's latent features. Encoder
levels give F1 (H x W), F2 (H/2), F3 (H/4) and deeper maps; an ordinary U-Net decoder brings the
deepest map back to H/4 (the decoded F3). Then equation (3):

* M3  = F3 decoded at F2's grid by the implicit upsampler;
* M23 = [F2; M3; U]  -> propagation unit (conv block)   (U: the uncertainty map)
* M123 = [F1; M23 decoded at the output grid; U]  -> propagation unit  -> output block
  (two convolutions) -> sigmoid.

F1 and U are bilinearly resized when the output grid differs from the input grid, so the matte
can be decoded at any size. ``scales`` selects how many levels are fused through the implicit
function (the paper's Table 2):

* ``scales=3``: both decoder upsamplings (H/4 -> H/2 and H/2 -> output) are implicit;
* ``scales=2``: only H/2 -> output is implicit, H/4 -> H/2 is bilinear + conv;
* ``scales=1``: all U-Net upsamplings are bilinear + conv at the input grid, and the implicit
  function decodes only the full-resolution features (after the last propagation unit) at the
  output grid.

``upsampling="bilinear"`` replaces every implicit upsampler by bilinear interpolation + a 3x3 conv.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution

from scripts.networks.blocks import DEFAULT_ACT, concat_channels, conv_block
from scripts.networks.implicit_upsampler import RegionAwareImplicitUpsampler, resize_rows
from scripts.networks.prob_unet import UNetDecoder, UNetEncoder

__all__ = ["InterpolateConvUpsampler", "MattingUNet"]

_UPSAMPLING = ("region_aware", "local_ensemble", "bilinear")


class InterpolateConvUpsampler(nn.Module):
    """Plain baseline upsampler: bilinear interpolation to the target grid, then a 3x3 conv -> norm -> act
    (one layer of :func:`conv_block`, whose instance norm keeps the channels-last layout).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        act: MONAI activation.
        norm: MONAI normalisation.

    Example::

        up = InterpolateConvUpsampler(64, 32)
        y = up(torch.rand(1, 64, 16, 16), output_size=(40, 40))   # (1, 32, 40, 40)
    """

    def __init__(
        self, in_channels: int, out_channels: int, act: Union[str, tuple] = DEFAULT_ACT, norm=None
    ) -> None:
        super().__init__()
        self.conv = conv_block(in_channels, out_channels, 1, act, norm)[0]

    def forward(self, feat: torch.Tensor, output_size: List[int]) -> torch.Tensor:
        return self.conv(_resize(feat, output_size))


class _StopBand(Exception):
    """Raised by :meth:`_GridStatistics.normalise` once the layer whose statistics are collected has its input.

    Local control flow of one :meth:`MattingUNet.decode_in_rows` call: it never leaves that call.
    """


class _GridStatistics:
    """Whole-grid statistics of the instance-normalisation layers of ``stages``, decoded band by band.

    Per-call state only: nothing is registered on the (shared) modules, so concurrent decodes of
    one network do not see each other (forward hooks on a served network would fire in every
    request's forward). The stages run through :func:`_run_stage`, which hands each
    instance-normalisation layer to :meth:`normalise`.

    ``passes()`` yields once per such layer (in forward order) and once more (``final``): during
    pass k the layers before k normalise with their collected statistics, layer k accumulates the
    sum and sum of squares of its input over each band's own rows (``rows``) and stops the band.
    Normalising with the collected mean and biased variance is what ``InstanceNorm2d`` computes
    on the whole grid, so the bands give the whole decode's values up to float rounding.
    """

    def __init__(self, stages: Sequence[nn.Module]) -> None:
        self.norms = [m for stage in stages for m in stage.modules()
                      if isinstance(m, nn.InstanceNorm2d) and not m.track_running_stats]
        self.stats: Dict[nn.Module, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.rows = (0, 0)
        self.final = not self.norms
        self._collecting: Optional[nn.Module] = None
        self._sums: List[torch.Tensor] = []

    def passes(self):
        for k, norm in enumerate(self.norms):
            self._collecting, self._sums = norm, []
            yield k
            total = torch.stack(self._sums).sum(0)
            mean = total[0] / total[2]
            var = (total[1] / total[2] - mean * mean).clamp_min(0.0)
            dtype = norm.weight.dtype if norm.weight is not None else torch.float32
            self.stats[norm] = (mean.to(dtype)[:, :, None, None], torch.rsqrt(var + norm.eps).to(dtype)[:, :, None, None])
        self._collecting = None
        self.final = True
        yield len(self.norms)

    def normalise(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` for a layer of another kind; an instance norm of :attr:`norms` with the collected
        whole-grid statistics, or, for the layer being collected, its input's sums then :class:`_StopBand`."""
        if module is self._collecting:
            part = x[:, :, self.rows[0] : self.rows[1]].double()
            self._sums.append(torch.stack([part.sum(dim=(2, 3)), (part * part).sum(dim=(2, 3)),
                                           torch.full_like(part[:, :, 0, 0], part.shape[2] * part.shape[3])]))
            raise _StopBand
        if module not in self.stats:
            return module(x)
        mean, rstd = self.stats[module]
        y = (x - mean.to(x.dtype)) * rstd.to(x.dtype)
        if module.affine:
            y = y * module.weight[None, :, None, None] + module.bias[None, :, None, None]
        return y


def _run_stage(module: nn.Module, x: torch.Tensor, grid_stats: _GridStatistics) -> torch.Tensor:
    """``module(x)`` for a stage built of ``nn.Sequential`` containers (MONAI ``Convolution`` and ``ADN``,
    :func:`conv_block`), with every leaf layer called through ``grid_stats.normalise``.

    Hand-written: running a module with some of its layers replaced for one call, without changing
    the module, is what hooks do and what concurrent requests on one network must not share.
    """
    if isinstance(module, nn.Sequential):
        for child in module:
            x = _run_stage(child, x, grid_stats)
        return x
    if any(isinstance(m, nn.InstanceNorm2d) for m in module.children()):
        raise TypeError(f"{type(module).__name__} holds an instance normalisation inside a layer that is not "
                        "an nn.Sequential: decode_in_rows cannot normalise it with whole-grid statistics")
    return grid_stats.normalise(module, x)


def _conv_reach(module: nn.Module) -> int:
    """Rows a stack of stride-1 'same' convolutions reads beyond its output rows (sum of paddings)."""
    return sum(int(m.padding[0]) for m in module.modules() if isinstance(m, nn.Conv2d))


def _upsample_rows(
    up: nn.Module, feat: torch.Tensor, size: List[int], row_start: int, row_stop: int, grid_stats: _GridStatistics
) -> torch.Tensor:
    """Rows ``[row_start, row_stop)`` of ``up(feat, size)``: exact for the implicit upsampler; for
    interpolation + convolution the first and last ``_conv_reach(up)`` rows are only exact at the
    grid's border (the caller's band margin covers them)."""
    if isinstance(up, RegionAwareImplicitUpsampler):
        return up.forward_rows(feat, size, row_start, row_stop)
    return _run_stage(up.conv, resize_rows(feat, size, row_start, row_stop), grid_stats)


def _resize(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to ``size`` (H, W); ``x`` itself when it already has that size."""
    size = [size[0], size[1]]  # no int(): sizes from shapes stay symbolic under torch.export (any H, W)
    if [x.shape[-2], x.shape[-1]] == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MattingUNet(nn.Module):
    """U-Net predicting the alpha matte from image, latent features and uncertainty, at any size.

    Args:
        in_channels: image channels.
        latent_channels: channels of the Probabilistic U-Net features concatenated to the image.
        filters: channels per encoder level (>= 3 levels: F1, F2, F3, deeper levels optional).
        upsampling: ``"region_aware"`` (paper), ``"local_ensemble"`` (LIIF) or ``"bilinear"``.
        scales: 1, 2 or 3 feature levels fused through the implicit function (see module doc).
        kernel_size: k of the k x k region of the implicit function (1, 2, 3).
        implicit_hidden: hidden width of the implicit function's MLP.
        area_weighting: LIIF area weights in the implicit function (k = 2 only).
        convs_per_block: convolutions per U-Net level / propagation unit.
        act: MONAI activation.
        norm: MONAI normalisation (``None`` for none).

    Example::

        net = MattingUNet(in_channels=1, latent_channels=32)
        alpha = net(image, latent, uncertainty)                          # (B, 1, H, W)
        alpha2 = net(image, latent, uncertainty, output_size=(300, 300))  # (B, 1, 300, 300)
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        filters: Sequence[int] = (16, 32, 64, 128),
        upsampling: str = "region_aware",
        scales: int = 3,
        kernel_size: int = 2,
        implicit_hidden: int = 32,
        area_weighting: bool = False,
        convs_per_block: int = 2,
        act: Union[str, tuple] = DEFAULT_ACT,
        norm: Optional[Union[str, tuple]] = None,
    ) -> None:
        super().__init__()
        if upsampling not in _UPSAMPLING:
            raise ValueError(f"upsampling must be one of {_UPSAMPLING}, got {upsampling!r}")
        if scales not in (1, 2, 3):
            raise ValueError(f"scales must be 1, 2 or 3, got {scales}")
        filters = tuple(int(f) for f in filters)
        if len(filters) < 3:
            raise ValueError(f"MattingUNet needs >= 3 levels (F1, F2, F3), got filters={filters}")
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.upsampling = upsampling
        self.scales = scales
        f1, f2, f3 = filters[:3]

        def upsampler(cin: int, cout: int, implicit: bool) -> nn.Module:
            if implicit and upsampling != "bilinear":
                return RegionAwareImplicitUpsampler(
                    cin, cout, implicit_hidden, kernel_size, mode=upsampling,
                    area_weighting=area_weighting,
                )
            return InterpolateConvUpsampler(cin, cout, act=act, norm=norm)

        self.encoder = UNetEncoder(in_channels + latent_channels, filters, convs_per_block, act, norm)
        # ordinary U-Net decoder from the deepest level back to F3's grid (H/4)
        self.deep_decoder = UNetDecoder(filters[2:], convs_per_block, act, norm) if len(filters) > 3 else None
        self.up3 = upsampler(f3, f2, implicit=scales >= 3)  # F3 -> F2's grid
        self.prop2 = conv_block(2 * f2 + 1, f2, convs_per_block, act, norm)  # [F2; M3; U]
        self.up2 = upsampler(f2, f1, implicit=scales >= 2)  # -> output grid (scales >= 2) or input grid
        self.prop1 = conv_block(2 * f1 + 1, f1, convs_per_block, act, norm)  # [F1; M23; U]
        self.up1 = upsampler(f1, f1, implicit=True) if scales == 1 else None  # -> output grid
        self.output_block = nn.Sequential(  # conv -> norm -> act (the U-Nets' layer), then the matte's logit
            *conv_block(f1, f1, 1, act, norm),
            Convolution(2, f1, 1, kernel_size=3, conv_only=True),
        )

    @torch.jit.ignore
    def implicit_upsamplers(self) -> Dict[str, RegionAwareImplicitUpsampler]:
        """The implicit upsamplers by name (``up3``, ``up2``, ``up1``), e.g. to draw learned offsets."""
        return {
            name: m
            for name, m in (("up3", self.up3), ("up2", self.up2), ("up1", self.up1))
            if isinstance(m, RegionAwareImplicitUpsampler)
        }

    def _encode(self, image: torch.Tensor, latent: torch.Tensor, uncertainty: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """F1 (B, f1, H, W) and M23 (B, f2, H/2, W/2): everything computed on the input grid."""
        # the image in the features' dtype: under bfloat16 autocast the first convolution would cast the
        # promoted float32 concatenation anyway (same values), and its gradient back and forth
        feats = self.encoder(concat_channels([image.to(latent.dtype), latent]))
        f1, f2 = feats[0], feats[1]
        deep_decoder = self.deep_decoder
        f3 = deep_decoder(feats[2:]) if deep_decoder is not None else feats[2]
        f2_size = [f2.shape[-2], f2.shape[-1]]
        m3 = self.up3(f3, f2_size)
        m23 = self.prop2(concat_channels([f2, m3, _resize(uncertainty, f2_size)]))
        return f1, m23

    @torch.jit.ignore
    def decode_in_rows(
        self,
        image: torch.Tensor,
        latent: torch.Tensor,
        uncertainty: torch.Tensor,
        output_size: Sequence[int],
        rows_per_band: int,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """:meth:`forward` at ``output_size``, decoded in bands of output rows (bounded memory).

        Everything on the input grid runs once; the stages on the output grid (the last
        upsampler, the propagation unit and the output block) run per band of ``rows_per_band``
        rows plus a margin of as many rows as their 3x3 convolutions reach, so each band equals
        the same rows of :meth:`forward` up to float rounding, and the memory of a band does not
        depend on the output height. Needs normalisation-free (or batch-normalised) output stages:
        instance or group statistics over the whole grid cannot be computed per band.

        Args:
            image, latent, uncertainty: as for :meth:`forward`.
            output_size: target grid (H', W').
            rows_per_band: output rows decoded at once (>= 1).
            out: optional (B, 1, H', W') tensor written in place (e.g. preallocated).

        Returns:
            the alpha matte (B, 1, H', W').
        """
        if not self.decodes_in_rows():
            raise ValueError("decode_in_rows needs output stages without instance/group/layer normalisation")
        in_size = [image.shape[-2], image.shape[-1]]
        out_size = [int(output_size[0]), int(output_size[1])]
        f1, m23 = self._encode(image, latent, uncertainty)
        up1 = self.up1
        x_in = None
        if up1 is not None:  # scales=1: everything but the last upsampler runs on the input grid
            x_in = self.prop1(concat_channels([f1, self.up2(m23, in_size), _resize(uncertainty, in_size)]))
        stages = [up1, self.output_block] if up1 is not None else [self.up2, self.prop1, self.output_block]
        # rows each band reads beyond its own: the reach of the 3x3 convolutions on the output grid
        # (an implicit upsampler decodes exactly the rows it is asked for)
        margin = sum(_conv_reach(stage) for stage in stages if not isinstance(stage, RegionAwareImplicitUpsampler))
        if out is None:
            out = image.new_empty([image.shape[0], 1, out_size[0], out_size[1]])
        step = max(1, int(rows_per_band))
        bands = []
        for r0 in range(0, out_size[0], step):
            r1 = min(out_size[0], r0 + step)
            bands.append((r0, r1, max(0, r0 - margin), min(out_size[0], r1 + margin)))

        # instance normalisation on the output grid needs statistics over the whole grid: one extra
        # pass per such layer accumulates them over the bands' own rows, then they are held fixed
        grid_stats = _GridStatistics(stages)

        def decode(m0: int, m1: int) -> torch.Tensor:
            if x_in is not None:
                x = _upsample_rows(up1, x_in, out_size, m0, m1, grid_stats)
            else:
                x = concat_channels([resize_rows(f1, out_size, m0, m1),
                                     _upsample_rows(self.up2, m23, out_size, m0, m1, grid_stats),
                                     resize_rows(uncertainty, out_size, m0, m1)])
                x = _run_stage(self.prop1, x, grid_stats)
            return _run_stage(self.output_block, x, grid_stats)

        for _ in grid_stats.passes():
            for r0, r1, m0, m1 in bands:
                grid_stats.rows = (r0 - m0, r1 - m0)
                try:
                    y = decode(m0, m1)
                except _StopBand:
                    continue
                if grid_stats.final:
                    out[:, :, r0:r1] = torch.sigmoid(y[:, :, r0 - m0 : r1 - m0])
        return out

    @torch.jit.ignore
    def decodes_in_rows(self) -> bool:
        """Whether :meth:`decode_in_rows` applies: no normalisation with whole-grid statistics on the output grid."""
        stages = [self.output_block, self.prop1, self.up2] + ([self.up1] if self.up1 is not None else [])
        grid_norms = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
        return not any(isinstance(m, grid_norms) for stage in stages for m in stage.modules())

    def forward(
        self,
        image: torch.Tensor,
        latent: torch.Tensor,
        uncertainty: torch.Tensor,
        output_size: Optional[List[int]] = None,
    ) -> torch.Tensor:
        """Alpha matte (B, 1, *output_size) in [0, 1].

        Args:
            image: (B, in_channels, H, W).
            latent: (B, latent_channels, H, W) Probabilistic U-Net features.
            uncertainty: (B, 1, H, W) uncertainty map in [0, 1].
            output_size: target grid (H', W'); default the input grid.
        """
        in_size = [image.shape[-2], image.shape[-1]]
        out_size = in_size if output_size is None else [int(output_size[0]), int(output_size[1])]
        f1, m23 = self._encode(image, latent, uncertainty)
        up1 = self.up1
        grid1 = in_size if up1 is not None else out_size
        m2 = self.up2(m23, grid1)
        x = self.prop1(concat_channels([_resize(f1, grid1), m2, _resize(uncertainty, grid1)]))
        if up1 is not None:
            x = up1(x, out_size)
        return torch.sigmoid(self.output_block(x))
