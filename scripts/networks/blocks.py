"""Small convolution blocks shared by the two U-Nets of the model.

Both U-Nets are built from MONAI's :class:`monai.networks.blocks.Convolution` (conv -> norm -> act);
this module only stacks them into the "two 3x3 convolutions" unit used at every U-Net level.
"""

from __future__ import annotations

from typing import Optional, Union

import torch.nn as nn
from monai.networks.blocks import Convolution

__all__ = ["DEFAULT_ACT", "conv_block"]

#: ReLU computed in place (the convolution before it does not need its output for backward).
DEFAULT_ACT = ("RELU", {"inplace": True})


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
            ``None`` for no normalisation.
        kernel_size: convolution kernel size (odd).

    Example::

        block = conv_block(1, 16)          # (B, 1, H, W) -> (B, 16, H, W)
    """
    if num_convs < 1:
        raise ValueError(f"num_convs must be >= 1, got {num_convs}")
    layers = []
    for i in range(num_convs):
        layers.append(
            Convolution(
                spatial_dims=2,
                in_channels=in_channels if i == 0 else out_channels,
                out_channels=out_channels,
                kernel_size=kernel_size,
                act=act,
                norm=norm,
            )
        )
    return nn.Sequential(*layers)
