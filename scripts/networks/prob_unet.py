"""Probabilistic U-Net (Kohl et al., NeurIPS 2018), as used by the paper (section 2.1).

A U-Net computes features of the image once; a prior net p(z|x) and a posterior net q(z|x, y) give
axis-aligned Gaussians over a low-dimensional latent z; ``fcomb`` (1x1 convolutions) combines a
sample of z, broadcast over space, with the U-Net's last features into a segmentation logit map.
Only ``fcomb`` is repeated per sample, so N samples cost N cheap 1x1-conv passes, not N U-Nets.

Hand-written (no maintained library ships this model); the convolution units are MONAI blocks and
the training distributions / KL come from ``torch.distributions``. Every module's ``forward`` and
the sampling used at inference (:meth:`ProbabilisticUNet.prior_params`,
:func:`reparameterise`) are plain tensor ops, so the model scripts with ``torch.jit.script``;
the distribution objects are built only on the training path.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from scripts.networks.blocks import DEFAULT_ACT, activation, concat_channels, conv_block, dense_gradient

__all__ = ["UNetEncoder", "UNetDecoder", "AxisAlignedGaussianNet", "FComb", "ProbabilisticUNet", "reparameterise"]


def reparameterise(mean: torch.Tensor, std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Latent samples ``mean + sigma * eps``: mean, std (B, L) and noise eps (B, N, L) -> (B, N, L)."""
    return mean.unsqueeze(1) + std.unsqueeze(1) * eps


@torch.jit.interface
class _TensorModule(nn.Module):
    """TorchScript interface of a module mapping one tensor to one tensor (as ``nn.Sequential``)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Sequential's argument name)
        pass


class UNetEncoder(nn.Module):
    """U-Net contracting path: a conv block per level, 2x2 average pooling between levels.

    Args:
        in_channels: input channels.
        filters: output channels of each level (the first level runs at full resolution).
        convs_per_block: convolutions per level.
        act: MONAI activation of the convolutions.
        norm: MONAI normalisation of the convolutions (``None`` for none).

    Example::

        enc = UNetEncoder(1, (32, 64, 128, 192))
        feats = enc(torch.rand(2, 1, 128, 128))   # 4 maps: 128^2, 64^2, 32^2, 16^2
    """

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int],
        convs_per_block: int = 2,
        act: Union[str, tuple] = DEFAULT_ACT,
        norm: Optional[Union[str, tuple]] = None,
    ) -> None:
        super().__init__()
        if len(filters) < 1:
            raise ValueError("filters must name at least one level")
        chans = [in_channels] + list(filters)
        self.blocks = nn.ModuleList(
            [conv_block(chans[i], chans[i + 1], convs_per_block, act, norm) for i in range(len(filters))]
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = block(x)
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    """U-Net expanding path: bilinear upsampling to the skip's size, concatenation, conv block.

    Args:
        filters: the encoder's filters (same order as :class:`UNetEncoder`).
        convs_per_block: convolutions per level.
        act: MONAI activation.
        norm: MONAI normalisation (``None`` for none).

    Returns (forward): the full-resolution features with ``filters[0]`` channels.
    """

    def __init__(
        self,
        filters: Sequence[int],
        convs_per_block: int = 2,
        act: Union[str, tuple] = DEFAULT_ACT,
        norm: Optional[Union[str, tuple]] = None,
    ) -> None:
        super().__init__()
        f = list(filters)
        # block i fuses level i+1 (upsampled) with the skip of level i
        self.blocks = nn.ModuleList(
            [conv_block(f[i + 1] + f[i], f[i], convs_per_block, act, norm) for i in range(len(f) - 1)]
        )

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i in range(len(self.blocks) - 1, -1, -1):  # deepest level first
            skip = feats[i]
            block: _TensorModule = self.blocks[i]  # an interface type lets TorchScript index by a variable
            x = F.interpolate(x, size=[skip.shape[-2], skip.shape[-1]], mode="bilinear", align_corners=False)
            x = block.forward(concat_channels([dense_gradient(x), skip]))  # (upsampling's backward wants it dense)
        return x


class AxisAlignedGaussianNet(nn.Module):
    """Encoder -> global average -> 1x1 conv giving mean and log-sigma of a diagonal Gaussian.

    Used twice: as the prior net p(z|x) (input: the image) and as the posterior net q(z|x, y)
    (input: the image concatenated with the segmentation target).

    Args:
        in_channels: input channels.
        filters: encoder filters.
        latent_dim: dimension of z.
        convs_per_block: convolutions per encoder level.
        act: MONAI activation.
        norm: MONAI normalisation.

    Example::

        prior = AxisAlignedGaussianNet(1, (32, 64, 128, 192), latent_dim=6)
        mean, std = prior(torch.rand(2, 1, 128, 128))   # (2, 6) each
        dist = prior.distribution(torch.rand(2, 1, 128, 128))   # Independent(Normal), batch (2,), event (6,)
    """

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int],
        latent_dim: int,
        convs_per_block: int = 2,
        act: Union[str, tuple] = DEFAULT_ACT,
        norm: Optional[Union[str, tuple]] = None,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = UNetEncoder(in_channels, filters, convs_per_block, act, norm)
        self.to_params = nn.Conv2d(filters[-1], 2 * latent_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and sigma of the Gaussian, each (B, latent_dim)."""
        h = self.encoder(x)[-1].mean(dim=(-2, -1), keepdim=True)
        params = self.to_params(h).flatten(1)
        mean, log_sigma = params[:, : self.latent_dim], params[:, self.latent_dim :]
        return mean, torch.exp(log_sigma)

    @torch.jit.ignore
    def distribution(self, x: torch.Tensor) -> Independent:
        """The Gaussian as ``Independent(Normal)`` (batch shape (B,), event shape (latent_dim,)), for training."""
        mean, std = self.forward(x)
        return Independent(Normal(loc=mean, scale=std), 1)


class FComb(nn.Module):
    """Combines latent samples z with the U-Net's last features by 1x1 convolutions.

    The first layer is a 1x1 conv on ``[features; tile(z)]``; it is computed as
    ``W_f * features + W_z z`` so that the feature part is evaluated once for all N samples.

    Args:
        feature_channels: channels of the U-Net features.
        latent_dim: dimension of z.
        num_layers: number of 1x1 convolutions (>= 2), the last one giving ``out_channels`` logits.
        out_channels: logits per sample (1 for the binary segmentation used here).
        act: MONAI activation name between the layers.

    Example::

        fcomb = FComb(32, 6)
        logits = fcomb(torch.rand(2, 32, 64, 64), torch.randn(2, 8, 6))   # (2, 8, 64, 64)
    """

    def __init__(
        self,
        feature_channels: int,
        latent_dim: int,
        num_layers: int = 3,
        out_channels: int = 1,
        act: Union[str, tuple] = DEFAULT_ACT,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"FComb needs num_layers >= 2, got {num_layers}")
        self.out_channels = out_channels
        self.feature_proj = nn.Conv2d(feature_channels, feature_channels, kernel_size=1, bias=False)
        self.latent_proj = nn.Linear(latent_dim, feature_channels)
        self.act = activation(act)
        layers: List[nn.Module] = []
        for _ in range(num_layers - 2):
            layers += [nn.Conv2d(feature_channels, feature_channels, kernel_size=1), activation(act)]
        layers.append(nn.Conv2d(feature_channels, out_channels, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """features (B, F, H, W), z (B, N, L) -> logits (B, N, H, W) (or (B, N, out, H, W) if out > 1)."""
        projected = self.feature_proj(features).permute(0, 2, 3, 1)  # (B, H, W, F), channels-last pixels
        latent = self.latent_proj(z)  # (B, N, F)
        logits: List[torch.Tensor] = []
        # one sample at a time: its (B, H, W, F) activations stay in the cache between the 1x1
        # layers, where all N at once ((B*N, F, H, W), N x larger) made them run at memory speed
        # (~2x the time of the whole fcomb; the same values)
        for i in range(z.shape[1]):
            h = self.act(projected + latent[:, i, None, None, :]).permute(0, 3, 1, 2)  # (B, F, H, W) channels-last
            logits.append(self.layers(h))  # (B, out, H, W)
        out = torch.stack(logits, dim=1)  # (B, N, out, H, W)
        return out[:, :, 0] if self.out_channels == 1 else out


class ProbabilisticUNet(nn.Module):
    """Probabilistic U-Net for binary segmentation with N samples from the prior.

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        filters: U-Net filters per level (also used by the prior and posterior encoders unless
            ``latent_filters`` is given).
        latent_dim: dimension of the latent z.
        num_fcomb_layers: 1x1 convolutions in ``fcomb``.
        convs_per_block: convolutions per U-Net level.
        latent_filters: encoder filters of the prior / posterior nets (default: ``filters``).
        act: MONAI activation.
        norm: MONAI normalisation (``None`` for none, as in Kohl et al.).

    Example::

        net = ProbabilisticUNet(1)
        out = net(image, seg_target=mask, num_samples=8)
        out["features"]          # (B, 32, H, W) latent features for the Matting U-Net
        out["sample_logits"]     # (B, 8, H, W) logits of 8 prior samples
        out["posterior_logits"]  # (B, 1, H, W) logits of one posterior sample
        out["kl"]                # (B,) KL(q(z|x,y) || p(z|x))
    """

    def __init__(
        self,
        in_channels: int = 1,
        filters: Sequence[int] = (32, 64, 128, 192),
        latent_dim: int = 6,
        num_fcomb_layers: int = 3,
        convs_per_block: int = 2,
        latent_filters: Optional[Sequence[int]] = None,
        act: Union[str, tuple] = DEFAULT_ACT,
        norm: Optional[Union[str, tuple]] = None,
    ) -> None:
        super().__init__()
        filters = tuple(int(f) for f in filters)
        latent_filters = tuple(int(f) for f in (latent_filters or filters))
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        self.feature_channels = filters[0]
        self.encoder = UNetEncoder(in_channels, filters, convs_per_block, act, norm)
        self.decoder = UNetDecoder(filters, convs_per_block, act, norm)
        self.prior_net = AxisAlignedGaussianNet(in_channels, latent_filters, latent_dim, convs_per_block, act, norm)
        self.posterior_net = AxisAlignedGaussianNet(
            in_channels + 1, latent_filters, latent_dim, convs_per_block, act, norm
        )
        self.fcomb = FComb(filters[0], latent_dim, num_fcomb_layers, out_channels=1, act=act)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The U-Net's last (full-resolution) features, (B, filters[0], H, W)."""
        return self.decoder(self.encoder(image))

    def prior_params(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and sigma of p(z|x), each (B, latent_dim): the scriptable form of :meth:`prior`."""
        return self.prior_net(image)

    @torch.jit.ignore
    def prior(self, image: torch.Tensor) -> Independent:
        """p(z|x): diagonal Gaussian with batch shape (B,) and event shape (latent_dim,)."""
        return self.prior_net.distribution(image)

    @torch.jit.ignore
    def posterior(self, image: torch.Tensor, seg_target: torch.Tensor) -> Independent:
        """q(z|x, y) with ``seg_target`` (B, 1, H, W) binary."""
        return self.posterior_net.distribution(torch.cat([image, seg_target.to(image.dtype)], dim=1))

    @staticmethod
    def sample_latents(
        dist: Independent, num_samples: int, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Reparameterised samples ``mean + sigma * eps``, shape (B, num_samples, latent_dim).

        ``generator`` (optional) draws ``eps`` from a local RNG instead of the global one.
        """
        mean, std = dist.base_dist.loc, dist.base_dist.scale
        shape = (mean.shape[0], num_samples, mean.shape[1])
        eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return reparameterise(mean, std, eps)

    def combine(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``fcomb``: features (B, F, H, W) and z (B, N, L) -> logits (B, N, H, W)."""
        return self.fcomb(features, z)

    @staticmethod
    def kl(posterior: Independent, prior: Independent) -> torch.Tensor:
        """Analytic KL(q || p) per image, shape (B,), >= 0."""
        return kl_divergence(posterior, prior)

    @torch.jit.ignore
    def forward(
        self,
        image: torch.Tensor,
        seg_target: Optional[torch.Tensor] = None,
        num_samples: int = 1,
        generator: Optional[torch.Generator] = None,
    ) -> Dict[str, torch.Tensor]:
        """Run the U-Net once, draw ``num_samples`` prior samples and, with a target, one posterior sample.

        Args:
            image: (B, in_channels, H, W).
            seg_target: optional (B, 1, H, W) binary mask; enables ``posterior_logits`` and ``kl``.
            num_samples: prior samples N.
            generator: optional local RNG for the prior samples.

        Returns:
            dict with ``features`` (B, F, H, W), ``sample_logits`` (B, N, H, W) and, with
            ``seg_target``, ``posterior_logits`` (B, 1, H, W) and ``kl`` (B,).

        Not part of the scripted model (it builds ``torch.distributions`` objects);
        ``MedicalMattingNet`` calls the parts it needs.
        """
        feats = self.features(image)
        prior = self.prior(image)
        out = {"features": feats, "sample_logits": self.combine(feats, self.sample_latents(prior, num_samples, generator))}
        if seg_target is not None:
            posterior = self.posterior(image, seg_target)
            z_q = posterior.rsample().unsqueeze(1)
            out["posterior_logits"] = self.combine(feats, z_q)
            out["kl"] = self.kl(posterior, prior)
        return out
