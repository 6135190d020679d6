"""Small convolution blocks shared by the two U-Nets of the model.

Both U-Nets are built from MONAI's :class:`monai.networks.blocks.Convolution` (conv -> norm -> act);
this module stacks them into the "two 3x3 convolutions" unit used at every U-Net level, with
instance normalisation that keeps a channels-last layout (:class:`LayoutKeepingInstanceNorm2d`).
"""

from __future__ import annotations

from functools import reduce
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_act_layer

__all__ = [
    "DEFAULT_ACT", "DtypeAwareReLU", "LayoutKeepingInstanceNorm2d", "activation", "concat_channels", "conv_block", "dense_gradient",
]

#: ReLU computed in place (the convolution before it does not need its output for backward).
DEFAULT_ACT = ("RELU", {"inplace": True})


def _is_channels_last(x: torch.Tensor) -> bool:
    """``x`` is dense in the channels-last layout and not also in NCHW (where both hold, e.g. one channel)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class LayoutKeepingInstanceNorm2d(nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` that computes in, and returns, the memory layout of its input.

    PyTorch's CPU instance norm reshapes the batch into channels, (B, C, H, W) -> (1, B*C, H, W),
    which needs the NCHW layout: a channels-last input is copied to NCHW, the output comes back
    NCHW (so the ReLU, pooling, upsampling and concatenation after it ran on the other layout, where
    upsampling and its backward are ~5x slower), and the backward copies the gradient twice more.
    Here a channels-last input is normalised image by image with ``F.batch_norm`` on each
    (1, C, H, W) slice (batch statistics of one image are its instance statistics), whose CPU
    kernels work on the channels-last layout directly; the slices are concatenated back (one copy,
    against four). Two conv -> norm -> ReLU layers in bfloat16, forward + backward: 0.66-0.97x the
    time, the default training step 0.82x on a 2-core AMD EPYC; the values are the same (bfloat16:
    identical; float32: the reduction order differs, ~4e-6) (docs/benchmarks.md, "Levers tried";
    PyTorch 2.13's instance norm also returns a wrong input gradient for a channels-last batch of
    one image, which this path avoids). NCHW inputs, and running statistics (``track_running_stats``, never used
    by this model), take PyTorch's own path. Same constructor and state as ``nn.InstanceNorm2d``.

    Example::

        norm = LayoutKeepingInstanceNorm2d(16)
        x = torch.rand(2, 16, 8, 8).to(memory_format=torch.channels_last)
        norm(x).is_contiguous(memory_format=torch.channels_last)   # True
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.InstanceNorm2d's argument name)
        if _is_channels_last(input) and not self.track_running_stats:
            images = [F.batch_norm(image, None, None, self.weight, self.bias, True, 0.0, self.eps) for image in input.split(1)]
            return images[0] if len(images) == 1 else torch.cat(images)
        return F.instance_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats, self.momentum if self.momentum is not None else 0.0, self.eps,
        )

    @classmethod
    def like(cls, norm: nn.InstanceNorm2d) -> "LayoutKeepingInstanceNorm2d":
        """A layout-keeping copy of ``norm`` (same arguments, parameters and buffers)."""
        new = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        new.load_state_dict(norm.state_dict())
        return new


class DtypeAwareReLU(nn.ReLU):
    """``torch.nn.ReLU(inplace=True)`` that computes in place for float32 only.

    PyTorch's in-place ReLU on CPU is the faster one for float32 but ~2x slower than the
    out-of-place one for large bfloat16 tensors (a (32, 32, 128, 128) channels-last tensor, 1 thread:
    13 against 6 ms), which is what the bfloat16 training pass runs. Same values. Training step of
    the default model with out-of-place ReLUs: 0.95x; ``predict`` (float32) keeps the in-place
    ReLU (out of place: 1.04x). See docs/benchmarks.md.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.ReLU's argument name)
        if self.inplace and input.dtype == torch.float32:
            return torch.relu_(input)
        return torch.relu(input)


def activation(act: Union[str, tuple]) -> nn.Module:
    """MONAI's activation layer for ``act`` (``"RELU"``, ``("RELU", {"inplace": True})``, ...), with an
    in-place ReLU made a :class:`DtypeAwareReLU`."""
    layer = get_act_layer(act)
    return _dtype_aware(layer)


def _dtype_aware(layer: nn.Module) -> nn.Module:
    if type(layer) is nn.ReLU and layer.inplace:
        return DtypeAwareReLU(inplace=True)
    return layer


class _DenseGradient(torch.autograd.Function):
    """Identity whose backward makes the gradient dense in the forward tensor's layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = _is_channels_last(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last if ctx.channels_last else torch.contiguous_format)


@torch.jit.unused
def _dense_gradient_autograd(x: torch.Tensor) -> torch.Tensor:
    return _DenseGradient.apply(x)


def dense_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x``, with its gradient made dense (in ``x``'s layout) before it flows further back.

    For a tensor that is concatenated with others: autograd hands each input of ``torch.cat`` a
    slice of the output's gradient, which is dense in no layout, and some backward kernels take a
    slow path on it (bilinear upsampling's: 33.6 -> 8.8 ms for a (4, 64, 128, 128) bfloat16
    gradient, channels-last, 1 thread). Values are unchanged; a no-op without autograd and in
    TorchScript. Hand-written: PyTorch has no such op.
    """
    if torch.jit.is_scripting() or not x.requires_grad:
        return x
    return _dense_gradient_autograd(x)


class _ChannelsLastConcat(torch.autograd.Function):
    """``torch.cat(tensors, dim=1)`` written into a channels-last output; backward as ``torch.cat``'s."""

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.channels = [t.shape[1] for t in tensors]
        ctx.dtypes = [t.dtype for t in tensors]
        first = tensors[0]
        shape = (first.shape[0], sum(ctx.channels), first.shape[2], first.shape[3])
        dtype = reduce(torch.promote_types, ctx.dtypes)  # torch.cat's type promotion
        out = torch.empty(shape, dtype=dtype, device=first.device, memory_format=torch.channels_last)
        return torch.cat(tensors, dim=1, out=out)  # an out of the right size keeps its strides

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return tuple(g.to(dtype) if needed else None
                     for g, dtype, needed in zip(grad.split(ctx.channels, dim=1), ctx.dtypes, ctx.needs_input_grad))


@torch.jit.unused
def _concat_channels_last(tensors: List[torch.Tensor]) -> torch.Tensor:
    return _ChannelsLastConcat.apply(*tensors)


def concat_channels(tensors: List[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)`` of 4-d maps, channels-last when any of them is.

    ``torch.cat`` returns NCHW unless every input *looks* channels-last by its strides, and two kinds
    of channels-last maps do not: one-channel maps (the image, the uncertainty map), whose strides
    fit both layouts, and maps of batch 1 from bilinear upsampling, whose batch stride is not the
    canonical one. The convolution after the concatenation then copied the NCHW result back to
    channels-last, and its backward copied again (the Prob. U-Net decoder's (1, 96, 128, 128) input
    alone: ~10 ms of a ~0.27 s batch-1 training step, docs/benchmarks.md). Here the result is
    written straight into a channels-last tensor when any input is channels-last (the network's
    layout); otherwise, and in TorchScript, it is ``torch.cat``. Same values, dtype (type
    promotion) and gradients as ``torch.cat``. Hand-written: ``torch.cat`` has no memory-format
    argument.

    Args:
        tensors: (B, C_i, H, W) maps with equal B, H, W.

    Example::

        a = torch.rand(1, 8, 4, 4).to(memory_format=torch.channels_last)
        u = torch.rand(1, 1, 4, 4)
        concat_channels([a, u]).is_contiguous(memory_format=torch.channels_last)   # True
    """
    if torch.jit.is_scripting() or not any(_is_channels_last(t) for t in tensors):
        return torch.cat(tensors, dim=1)
    return _concat_channels_last(tensors)


def conv_block(
    in_channels: int,
    out_channels: int,
    num_convs: int = 2,
    act: Union[str, tuple] = DEFAULT_ACT,
    norm: Optional[Union[str, tuple]] = None,
    kernel_size: int = 3,
) -> nn.Sequential:
    """``num_convs`` MONAI ``Convolution`` layers (2D, same padding), each conv -> norm -> act.

    Args:
        in_channels: channels of the input.
        out_channels: channels of every convolution's output.
        num_convs: number of stacked convolutions (>= 1).
        act: activation name/tuple understood by MONAI (``"RELU"``, ``("LEAKYRELU", {...})``).
        norm: optional normalisation name/tuple understood by MONAI (``"INSTANCE"``, ``"BATCH"``);
            ``None`` for no normalisation. Instance normalisation keeps a channels-last layout
            (:class:`LayoutKeepingInstanceNorm2d`).
        kernel_size: convolution kernel size (odd).

    Example::

        block = conv_block(1, 16)          # (B, 1, H, W) -> (B, 16, H, W)
    """
    if num_convs < 1:
        raise ValueError(f"num_convs must be >= 1, got {num_convs}")
    layers = []
    for i in range(num_convs):
        layer = Convolution(
            spatial_dims=2,
            in_channels=in_channels if i == 0 else out_channels,
            out_channels=out_channels,
            kernel_size=kernel_size,
            act=act,
            norm=norm,
        )
        if type(getattr(layer.adn, "N", None)) is nn.InstanceNorm2d:
            layer.adn.N = LayoutKeepingInstanceNorm2d.like(layer.adn.N)
        if hasattr(layer.adn, "A"):
            layer.adn.A = _dtype_aware(layer.adn.A)
        layers.append(layer)
    return nn.Sequential(*layers)
