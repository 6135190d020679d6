"""The whole model: Probabilistic U-Net -> uncertainty map -> Matting U-Net (paper Fig. 2).

This is ``network_def`` of the bundle configs; its API is the contract in docs/architecture.md.
The inference path (``forward``, ``predict``, test-time flips included) scripts with
``torch.jit.script`` (``monai.bundle ckpt_export``); training methods stay Python-only.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from scripts.networks.blocks import DEFAULT_ACT
from scripts.networks.implicit_upsampler import resize_rows
from scripts.networks.matting_unet import MattingUNet
from scripts.networks.prob_unet import ProbabilisticUNet, reparameterise
from scripts.networks.test_time_flips import FLIP_SETS, flip_views, merge_uncertainty, merge_views, unflip_view
from scripts.networks.uncertainty import UNCERTAINTY_MAPS, uncertainty_map

__all__ = ["MedicalMattingNet", "PREDICTION_KEYS", "CheckpointMismatchError", "prior_noise"]

#: constructor arguments that change how the model predicts but not its weights: a checkpoint
#: trained with other values loads, and the values of the network being loaded into are kept
PREDICTION_KEYS = ("num_samples", "sample_seed", "test_time_flips", "channels_last")
#: constructor arguments added after checkpoints were first shipped, with the value those
#: checkpoints were trained with (a saved configuration without the key means this value)
ADDED_KEYS: Dict[str, Any] = {"uncertainty": "entropy"}


class CheckpointMismatchError(ValueError):
    """A checkpoint was trained with another architecture than the network it is loaded into."""


def prior_noise(seed: int, num_samples: int, latent_dim: int) -> torch.Tensor:
    """The fixed standard-normal noise eps (num_samples, latent_dim) of the eval-mode prior samples.

    Drawn from a CPU ``torch.Generator`` seeded with ``seed``, the same numbers on every device.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn((1, num_samples, latent_dim), generator=generator)[0]


def _plain(value: Any) -> Any:
    """JSON-compatible copy (tuples become lists), so configs compare equal however they were written."""
    return json.loads(json.dumps(value))


class MedicalMattingNet(nn.Module):
    """Medical matting network with a multi-scale region-aware implicit decoder.

    The Probabilistic U-Net runs its U-Net once per image; N prior samples (``fcomb`` only) give
    N segmentation probability maps whose mean's binary entropy is the uncertainty map (no
    gradient flows through it). The Matting U-Net takes the image, the Prob. U-Net's last
    features and the uncertainty map and decodes the alpha matte at any requested grid.

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        prob_filters: Probabilistic U-Net filters.
        latent_dim: dimension of the Prob. U-Net latent z.
        num_fcomb_layers: 1x1 convolutions of ``fcomb``.
        num_samples: prior samples N for the uncertainty map.
        matting_filters: Matting U-Net filters (>= 3 levels).
        upsampling: ``"region_aware"``, ``"local_ensemble"`` or ``"bilinear"`` (Table 2).
        scales: levels fused by the implicit function, 1, 2 or 3 (Table 2).
        kernel_size: k of the k x k implicit region, 1, 2 or 3 (Table 2).
        implicit_hidden: hidden width of the implicit MLP.
        area_weighting: LIIF area weights (k = 2 only).
        convs_per_block: convolutions per U-Net level (both U-Nets).
        latent_filters: prior / posterior encoder filters (default ``prob_filters``).
        act: MONAI activation.
        norm: MONAI normalisation (``None`` for none).
        detach_latent: stop the matting loss from reaching the Prob. U-Net through its features.
        sample_seed: in ``eval()`` mode the prior samples are ``mean + sigma * eps`` with one fixed
            noise ``eps`` (N, latent_dim) drawn from a generator seeded with this value
            (:func:`prior_noise`; kept as the non-persistent buffer ``prior_eps``, so it is part of
            a scripted / exported model). Every image of a batch, on every device, gets the same
            ``eps``: deterministic predictions that do not depend on the batch, without touching
            the global RNG. ``None`` uses the global RNG (``torch.manual_seed`` then makes calls
            repeatable); training always uses the global RNG.
        test_time_flips: flipped views averaged by :meth:`predict` (and so by ``forward`` in eval
            mode): ``"none"``, ``"h"`` (identity + horizontal) or ``"hv"`` (the four flips); see
            ``scripts/networks/test_time_flips.py``. Training (``forward_train``) never flips.
        uncertainty: the uncertainty map computed from the prior samples, input of the Matting
            U-Net and output of :meth:`predict` (``scripts/networks/uncertainty.py``):
            ``"entropy"`` (the paper's binary entropy of the mean sample) or ``"sample_std"``
            (how much the samples disagree).
        channels_last: store the convolution weights in ``torch.channels_last`` memory format so that
            the convolutions run in NHWC (about 25 % faster training steps on the project's CPU; see
            docs/networks.md). Results are the same up to float rounding.

    Example::

        net = MedicalMattingNet(in_channels=1).eval()
        alpha = net(image)                               # (B, 1, H, W)
        out = net.predict(image, output_size=(256, 256)) # alpha, uncertainty, sample_probs
        train_out = net.train().forward_train(image, seg_target)
    """

    def __init__(
        self,
        in_channels: int = 1,
        prob_filters: Sequence[int] = (32, 64, 128, 192),
        latent_dim: int = 6,
        num_fcomb_layers: int = 3,
        num_samples: int = 8,
        matting_filters: Sequence[int] = (16, 32, 64, 128),
        upsampling: str = "region_aware",
        scales: int = 3,
        kernel_size: int = 2,
        implicit_hidden: int = 32,
        area_weighting: bool = False,
        convs_per_block: int = 2,
        latent_filters: Optional[Sequence[int]] = None,
        act: Union[str, tuple] = DEFAULT_ACT,
        norm: Optional[Union[str, tuple]] = None,
        detach_latent: bool = False,
        sample_seed: Optional[int] = None,
        test_time_flips: str = "none",
        channels_last: bool = True,
        uncertainty: str = "entropy",
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if uncertainty not in UNCERTAINTY_MAPS:
            raise ValueError(f"uncertainty must be one of {list(UNCERTAINTY_MAPS)}, got {uncertainty!r}")
        if test_time_flips not in FLIP_SETS:
            raise ValueError(f"test_time_flips must be one of {sorted(FLIP_SETS)}, got {test_time_flips!r}")
        # every constructor argument: saved in the state dict (``_extra_state``) so that a checkpoint
        # says which network it belongs to (see get_extra_state / from_checkpoint)
        self.config: Dict[str, Any] = _plain(
            dict(
                in_channels=in_channels, prob_filters=prob_filters, latent_dim=latent_dim,
                num_fcomb_layers=num_fcomb_layers, num_samples=num_samples, matting_filters=matting_filters,
                upsampling=upsampling, scales=scales, kernel_size=kernel_size, implicit_hidden=implicit_hidden,
                area_weighting=area_weighting, convs_per_block=convs_per_block, latent_filters=latent_filters,
                act=act, norm=norm, detach_latent=detach_latent, sample_seed=sample_seed,
                test_time_flips=test_time_flips, channels_last=channels_last, uncertainty=uncertainty,
            )
        )  # fmt: skip
        self.test_time_flips = test_time_flips
        self.uncertainty = uncertainty
        self.in_channels = in_channels
        self.num_samples = num_samples
        self.detach_latent = detach_latent
        self.sample_seed = sample_seed
        self._prior_eps_seed = sample_seed  # the seed prior_eps was drawn with (eager code redraws on change)
        self.prob_unet = ProbabilisticUNet(
            in_channels, prob_filters, latent_dim, num_fcomb_layers, convs_per_block, latent_filters, act, norm
        )
        self.matting_unet = MattingUNet(
            in_channels,
            self.prob_unet.feature_channels,
            matting_filters,
            upsampling=upsampling,
            scales=scales,
            kernel_size=kernel_size,
            implicit_hidden=implicit_hidden,
            area_weighting=area_weighting,
            convs_per_block=convs_per_block,
            act=act,
            norm=norm,
        )
        eps = torch.zeros(0, latent_dim) if sample_seed is None else prior_noise(sample_seed, num_samples, latent_dim)
        self.register_buffer("prior_eps", eps, persistent=False)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------- configuration in checkpoints
    @torch.jit.ignore
    def get_extra_state(self) -> Dict[str, Any]:
        """Saved as ``_extra_state`` in :meth:`state_dict`: the constructor arguments of this network."""
        return {"config": dict(self.config)}

    @torch.jit.ignore
    def set_extra_state(self, state: Any) -> None:
        """Check, when weights are loaded, that they were trained with this architecture.

        Raises:
            CheckpointMismatchError: one line naming every architecture argument whose value differs
                (prediction settings, :data:`PREDICTION_KEYS`, may differ: this network keeps its own).
        """
        saved = state.get("config") if isinstance(state, Mapping) else None
        if not isinstance(saved, Mapping):
            raise CheckpointMismatchError("the checkpoint's network configuration (_extra_state) is unreadable")
        differ = [
            f"{key}={saved.get(key)!r} (this network: {self.config.get(key)!r})"
            for key in sorted(set(saved) | set(self.config))
            if key not in PREDICTION_KEYS and _plain(saved.get(key, ADDED_KEYS.get(key))) != self.config.get(key)
        ]
        if differ:
            raise CheckpointMismatchError(
                "the checkpoint was trained with another network: " + "; ".join(differ)
                + " (serve it with configs/inference.yaml, which builds the network from the checkpoint)"
            )

    @staticmethod
    def checkpoint_config(state_dict: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """The constructor arguments saved in a state dict by :meth:`get_extra_state` (``None`` if absent)."""
        extra = state_dict.get("_extra_state") if isinstance(state_dict, Mapping) else None
        config = extra.get("config") if isinstance(extra, Mapping) else None
        return dict(config) if isinstance(config, Mapping) else None

    # ---------------------------------------------------------------------------------- helpers
    def _check_image(self, image: torch.Tensor) -> None:
        if not torch.jit.is_scripting():
            if not torch.is_tensor(image):
                raise ValueError(
                    f"MedicalMattingNet expects an image (B, {self.in_channels}, H, W), got {type(image).__name__}"
                )
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"MedicalMattingNet expects an image (B, {self.in_channels}, H, W), got {image.shape}")

    def _prior_noise(self, batch: int, num_samples: int, like: torch.Tensor) -> torch.Tensor:
        """Noise eps (B, N, latent_dim) of the prior samples: ``prior_eps`` in eval mode with a seed."""
        seed = self.sample_seed
        if self.training or seed is None:
            shape = [batch, num_samples, self.prob_unet.latent_dim]
            return torch.randn(shape, device=like.device, dtype=like.dtype)
        eps = self.prior_eps
        if not torch.jit.is_scripting():
            if eps.shape[0] != num_samples or self._prior_eps_seed != seed:  # another N or seed than built with
                eps = prior_noise(seed, num_samples, self.prob_unet.latent_dim)
        elif eps.shape[0] != num_samples:
            raise ValueError(
                f"this exported model draws its prior samples with the fixed noise of num_samples={eps.shape[0]}; "
                f"got num_samples={num_samples} (export with --num_samples {num_samples})"
            )
        return eps.to(device=like.device, dtype=like.dtype).unsqueeze(0).expand(batch, -1, -1)

    def _prior_samples(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        num_samples: int,
        mean: Optional[torch.Tensor] = None,
        std: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Sigmoid probabilities of N prior samples (B, N, H, W), without gradient.

        ``mean``, ``std``: p(z|x)'s parameters (B, latent_dim) when already computed.
        """
        with torch.no_grad():
            if mean is not None and std is not None:
                mu, sigma = mean.detach(), std.detach()
            else:
                mu, sigma = self.prob_unet.prior_params(image)
            z = reparameterise(mu, sigma, self._prior_noise(mu.shape[0], num_samples, mu))
            return torch.sigmoid(self.prob_unet.combine(features.detach(), z))

    def _matting_latent(self, features: torch.Tensor) -> torch.Tensor:
        return features.detach() if self.detach_latent else features

    # --------------------------------------------------------------------------------- public API
    @torch.jit.export
    def predict(
        self,
        image: torch.Tensor,
        output_size: Optional[List[int]] = None,
        num_samples: Optional[int] = None,
        flips: Optional[str] = None,
    ) -> Dict[str, torch.Tensor]:
        """Alpha matte, uncertainty map and prior-sample probabilities, averaged over test-time flips.

        Args:
            image: (B, in_channels, H, W) float in [0, 1].
            output_size: grid (H', W') of ``alpha`` and ``uncertainty``; default (H, W).
            num_samples: prior samples N per view (default: the constructor's ``num_samples``).
            flips: test-time flips (default: the constructor's ``test_time_flips``).

        Returns:
            ``alpha`` (B, 1, H', W') in [0, 1]; ``uncertainty`` (B, 1, H', W') in [0, 1];
            ``sample_probs`` (B, V*N, H, W) for V flipped views.

        Exported with the scripted model: ``torch.jit.load("model.ts").predict(image)``.
        """
        views = flip_views(self.test_time_flips if flips is None else flips)
        if len(views) == 1:
            return self._predict_view(image, output_size, num_samples)
        outs: List[Dict[str, torch.Tensor]] = []
        for dims in views:
            view = image.flip(dims) if len(dims) > 0 else image
            outs.append(unflip_view(self._predict_view(view, output_size, num_samples), dims))
        return merge_views(outs, image, output_size, self.uncertainty)

    def _predict_view(
        self,
        image: torch.Tensor,
        output_size: Optional[List[int]] = None,
        num_samples: Optional[int] = None,
    ) -> Dict[str, torch.Tensor]:
        """:meth:`predict` of one view (no flips)."""
        self._check_image(image)
        size: Optional[List[int]] = None
        if output_size is not None:
            if len(output_size) != 2 or min(output_size) < 1:
                raise ValueError(f"output_size must be two positive ints (H', W'), got {output_size}")
            size = [int(output_size[0]), int(output_size[1])]
        features, sample_probs, uncertainty = self._prior_view(image, num_samples)
        alpha = self.matting_unet(image, self._matting_latent(features), uncertainty, size)
        if alpha.shape[-2:] != uncertainty.shape[-2:]:
            uncertainty = F.interpolate(uncertainty, size=alpha.shape[-2:], mode="bilinear", align_corners=False)
        return {"alpha": alpha, "uncertainty": uncertainty.clamp(0.0, 1.0), "sample_probs": sample_probs}

    def _prior_view(
        self, image: torch.Tensor, num_samples: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The Prob. U-Net's part of one view: its features (B, F, H, W), the N prior-sample
        probabilities (B, N, H, W) and their uncertainty map (B, 1, H, W), N = ``num_samples``
        (default: the constructor's). Shared by :meth:`predict` and :meth:`predict_in_rows`."""
        n = self.num_samples if num_samples is None else int(num_samples)
        if n < 1:
            raise ValueError(f"num_samples must be >= 1, got {n}")
        features = self.prob_unet.features(image)
        sample_probs = self._prior_samples(image, features, n)
        return features, sample_probs, uncertainty_map(sample_probs, self.uncertainty)

    @torch.jit.ignore
    def predict_in_rows(
        self,
        image: torch.Tensor,
        output_size: Sequence[int],
        num_samples: Optional[int] = None,
        flips: Optional[str] = None,
        band_pixels: int = 1 << 18,
    ) -> Dict[str, torch.Tensor]:
        """:meth:`predict` at ``output_size``, with the output-grid stages decoded in bands of rows.

        Same outputs as :meth:`predict` up to float rounding, but the memory of the decoding is
        bounded by ``band_pixels`` query points per band (plus the two (B, 1, H', W') results),
        whatever ``output_size`` is: the implicit decoder makes any output grid possible, this
        makes a large one affordable. The networks themselves run once per view on ``image``'s
        grid. Python only (the scripted model keeps :meth:`predict`); a network whose output
        stages normalise over the whole grid falls back to :meth:`predict`.

        Args:
            image: (B, in_channels, H, W) float in [0, 1].
            output_size: grid (H', W') of ``alpha`` and ``uncertainty``.
            num_samples: prior samples N per view (default: the constructor's).
            flips: test-time flips (default: the constructor's ``test_time_flips``).
            band_pixels: output pixels decoded at once (rows per band = ``band_pixels // W'``, >= 1).
        """
        self._check_image(image)
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(f"output_size must be two positive ints (H', W'), got {output_size}")
        size = [int(output_size[0]), int(output_size[1])]
        if not self.matting_unet.decodes_in_rows():
            return self.predict(image, size, num_samples, flips)
        rows = max(1, int(band_pixels) // size[1])
        views = flip_views(self.test_time_flips if flips is None else flips)
        batch = image.shape[0]
        with torch.no_grad():
            alpha = image.new_zeros([batch, 1] + size)
            buffer = image.new_empty([batch, 1] + size) if len(views) > 1 else alpha
            samples: List[torch.Tensor] = []
            uncertainties: List[torch.Tensor] = []
            for dims in views:
                view = image.flip(dims) if len(dims) > 0 else image
                features, sample_probs, uncertainty = self._prior_view(view, num_samples)
                decoded = self.matting_unet.decode_in_rows(
                    view, self._matting_latent(features), uncertainty, size, rows, out=buffer
                )
                if len(views) > 1:
                    alpha += decoded.flip(dims) if len(dims) > 0 else decoded
                samples.append(sample_probs.flip(dims) if len(dims) > 0 else sample_probs)
                uncertainties.append(uncertainty.flip(dims) if len(dims) > 0 else uncertainty)
            if len(views) > 1:
                alpha /= len(views)
            sample_probs = torch.cat(samples, dim=1)
            # merge_views' rule, on the input grid (bilinear resizing is linear: resized below)
            uncertainty = merge_uncertainty(uncertainties, sample_probs, image, size, self.uncertainty)
            full = image.new_empty([batch, 1] + size)
            for r0 in range(0, size[0], rows):
                r1 = min(size[0], r0 + rows)
                full[:, :, r0:r1] = resize_rows(uncertainty, size, r0, r1).clamp(0.0, 1.0)
        return {"alpha": alpha, "uncertainty": full, "sample_probs": sample_probs}

    def forward(self, image: torch.Tensor, output_size: Optional[List[int]] = None) -> torch.Tensor:
        """Alpha matte (B, 1, H, W), or (B, 1, *output_size), values in [0, 1] (:meth:`predict`'s ``alpha``)."""
        return self.predict(image, output_size, None, None)["alpha"]

    @torch.jit.ignore
    def forward_train(self, image: torch.Tensor, seg_target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Training pass: posterior sample for the segmentation loss, prior samples for the uncertainty.

        Args:
            image: (B, in_channels, H, W) float in [0, 1].
            seg_target: (B, 1, H, W) binary pseudo ground-truth mask.

        Returns:
            ``alpha`` (B, 1, H, W), ``uncertainty`` (B, 1, H, W) without gradient, ``seg_logits``
            (B, 1, H, W) of one posterior sample, ``kl`` (B,) = KL(q(z|x,y) || p(z|x)),
            ``sample_probs`` (B, N, H, W).
        """
        self._check_image(image)
        if seg_target.ndim != 4 or seg_target.shape[1] != 1 or seg_target.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"seg_target must be (B, 1, {image.shape[-2]}, {image.shape[-1]}), got {tuple(seg_target.shape)}"
            )
        prob = self.prob_unet
        features = prob.features(image)
        prior = prob.prior(image)
        posterior = prob.posterior(image, seg_target)
        seg_logits = prob.combine(features, posterior.rsample().unsqueeze(1))  # (B, 1, H, W)
        kl = prob.kl(posterior, prior)
        sample_probs = self._prior_samples(image, features, self.num_samples, prior.base_dist.loc, prior.base_dist.scale)
        uncertainty = uncertainty_map(sample_probs, self.uncertainty)
        alpha = self.matting_unet(image, self._matting_latent(features), uncertainty)
        return {
            "alpha": alpha,
            "uncertainty": uncertainty,
            "seg_logits": seg_logits,
            "kl": kl,
            "sample_probs": sample_probs,
        }

    @torch.no_grad()
    def sampling_positions(
        self,
        image: torch.Tensor,
        query_pixels: torch.Tensor,
        output_size: Optional[Sequence[int]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Where each implicit upsampler sampled its latent codes for chosen output pixels.

        For drawing the learned regions over the image (the paper's offset visualisation). Runs
        :meth:`predict` once and reads each implicit upsampler's input through a forward hook.

        Args:
            image: (B, in_channels, H, W).
            query_pixels: (Q, 2) integer (row, col) pixels of the output grid.
            output_size: output grid (H', W'); default (H, W).

        Returns:
            ``{"up3" | "up2" | "up1": (B, Q, k*k, 2)}``: (row, col) positions in output-pixel
            coordinates (fractional). For an upsampler whose own target grid is coarser than the
            output (``up3`` decodes at H/2), the query is the pixel of that grid containing the
            output pixel.
        """
        upsamplers = self.matting_unet.implicit_upsamplers()
        if not upsamplers:
            raise ValueError("upsampling='bilinear' has no implicit upsampler whose sampling positions could be shown")
        captured: Dict[str, tuple] = {}

        def keep(name: str):
            def hook(module, args):
                captured[name] = (args[0], tuple(int(v) for v in args[1]))

            return hook

        handles = [m.register_forward_pre_hook(keep(name)) for name, m in upsamplers.items()]
        try:
            alpha = self.predict(image, output_size)["alpha"]
        finally:
            for handle in handles:
                handle.remove()
        out_h, out_w = alpha.shape[-2:]
        qp = torch.as_tensor(query_pixels, device=image.device).long().view(-1, 2)
        if (qp < 0).any() or (qp[:, 0] >= out_h).any() or (qp[:, 1] >= out_w).any():
            raise ValueError(f"query_pixels must lie inside the output grid {(out_h, out_w)}")
        result = {}
        for name, (feat, (hq, wq)) in captured.items():
            scale = torch.tensor([hq / out_h, wq / out_w], device=image.device)
            q = torch.floor((qp + 0.5) * scale).long()
            q = torch.minimum(q, torch.tensor([hq - 1, wq - 1], device=image.device))
            pos = upsamplers[name].sampling_positions(feat, (hq, wq), q)  # target-grid pixels
            result[name] = (pos + 0.5) / scale.to(pos.dtype) - 0.5
        return result

