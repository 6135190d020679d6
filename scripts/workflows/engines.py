"""MONAI engines for the two-network matting model: one training and one evaluation iteration.

``MedicalMattingNet`` does not fit MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` iteration
(``loss(network(image), label)``): training draws a pseudo ground-truth mask per sample and step,
feeds it to the posterior net (``forward_train(image, seg_target)``) and takes a dict of losses;
evaluation needs the alpha matte, the uncertainty map and the prior samples of ``predict``. The two
subclasses below replace only ``_iteration`` and keep everything else of the MONAI engines (events,
handlers, metrics, decollation, AMP, gradient accumulation is not supported).

Batch keys (from ``scripts.data.transforms``): ``image`` (B, C, H, W), ``alpha`` (B, 1, H, W),
``masks`` (B, K, H, W), ``trimap`` (B, 1, H, W) with 128 = unknown, ``case`` (list of names).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics import Average
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from scripts.data.transforms import TRIMAP_UNKNOWN
from scripts.losses import PSEUDO_GROUND_TRUTH_MODES, pseudo_ground_truth
from scripts.workflows.inference import MattingInferer, run_matting_inferer

__all__ = ["LOSS_NAMES", "POSTERIOR_TARGETS", "forward_train", "MattingTrainer", "MattingEvaluator", "loss_averages", "output_scalar"]

#: the scalar losses of ``MedicalMattingLoss`` kept in the trainer output (and averaged per epoch)
LOSS_NAMES = ("loss", "ce", "kl", "l1", "grad", "seg", "mat", "w_seg", "w_mat")
#: what the posterior net may be conditioned on (MattingTrainer posterior_target)
POSTERIOR_TARGETS = ("mask", "alpha")


def _to(batch: dict, key: str, device: torch.device, non_blocking: bool) -> torch.Tensor:
    if key not in batch:
        raise KeyError(f"the batch has no {key!r} entry (keys: {sorted(map(str, batch))}).")
    return torch.as_tensor(batch[key]).to(device=device, non_blocking=non_blocking)


def _switch(value: Any, name: str) -> bool:
    """A boolean setting; the strings ``"true"`` / ``"false"`` (any case) of a command line are read as such
    (``bool("false")`` would be ``True``), anything else that is not a bool is an error naming the setting."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{name} must be true or false, got {value!r}")


def forward_train(network: torch.nn.Module, image: torch.Tensor, seg_target: torch.Tensor,
                  cpu_bf16: bool = False) -> dict[str, torch.Tensor]:
    """``network.forward_train(image, seg_target)``; with ``cpu_bf16`` on a CPU tensor, under bfloat16
    autocast with the outputs returned in float32 (so that the loss is computed in float32)."""
    if cpu_bf16 and image.device.type == "cpu":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = network.forward_train(image, seg_target)
        return {key: value.float() for key, value in out.items()}
    return network.forward_train(image, seg_target)


class MattingTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for ``MedicalMattingNet`` + ``MedicalMattingLoss``.

    One iteration: draw the pseudo ground truth (``pseudo_gt="rater"``: one rater's mask at random
    per sample, option 1; ``"threshold"``: the alpha matte thresholded at a random level per sample,
    option 2), run ``network.forward_train(image, seg_target)``, compute ``loss_function(out, alpha,
    seg_target)`` and step the optimiser. ``engine.state.output`` holds ``image``, ``label`` (the
    true alpha), ``pred`` (the predicted alpha, detached) and every scalar of the loss dict
    (``loss``, ``ce``, ``kl``, ``l1``, ``grad``, ``seg``, ``mat``, ``w_seg``, ``w_mat``) as detached
    0-dim tensors; with ``decollate=True`` (default) MONAI turns it into a list of per-sample dicts
    and the scalars are repeated in each, so ``from_engine(["loss"], first=True)`` reads the loss.

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function: as for
            ``SupervisedTrainer``; ``network`` must have ``forward_train`` and ``loss_function`` must
            return a dict with a ``"loss"`` entry.
        pseudo_gt: ``"rater"`` or ``"threshold"``.
        threshold_range: (low, high) of the random threshold level of ``"threshold"``.
        seed: seed of the generator drawing the pseudo ground truth (``None``: global RNG).
        cpu_bf16: on a CPU device, run the network's forward pass under ``torch.autocast("cpu",
            dtype=torch.bfloat16)`` (convolutions and linear layers in bfloat16; the loss and the
            optimiser step stay in float32, no loss scaling is needed for bfloat16). About 0.68x the
            step time on CPUs with AVX-512 bf16 (docs/benchmarks.md). Ignored on CUDA, where
            ``amp`` is MONAI's float16 mixed precision.
        image_key, alpha_key, masks_key: batch keys.
        posterior_target: what the posterior net q(z|x, y) is given as ``y``: ``"mask"`` (default,
            Kohl et al.: the pseudo ground-truth mask, also the cross-entropy target) or ``"alpha"``
            (the true alpha matte, as in the Medical Matting code base's Brain-growth configuration;
            the cross-entropy target stays the pseudo ground truth).
        train_step: optional module whose ``forward(image, seg_target, alpha, cpu_bf16)`` returns
            ``(forward_train dict, loss dict)`` (optional 5th argument: the posterior's input) for ``network`` and ``loss_function``, used for the
            forward pass instead of calling them one after the other: the
            ``DistributedDataParallel``-wrapped ``scripts.workflows.distributed.MattingTrainStep`` of
            ``configs/multi_gpu_train.yaml`` (gradients of the network and the learned loss weights
            averaged over the ranks).
        kwargs: other ``SupervisedTrainer`` arguments (``train_handlers``, ``additional_metrics``,
            ``amp``, ``decollate``, ...).

    Example::

        trainer = MattingTrainer(device="cpu", max_epochs=100, train_data_loader=loader, network=net,
                                 optimizer=opt, loss_function=MedicalMattingLoss(), pseudo_gt="rater",
                                 additional_metrics=loss_averages())
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        pseudo_gt: str = "rater",
        threshold_range: Sequence[float] = (0.1, 0.9),
        seed: int | None = None,
        image_key: str = "image",
        alpha_key: str = "alpha",
        masks_key: str = "masks",
        cpu_bf16: bool = False,
        train_step: torch.nn.Module | None = None,
        posterior_target: str = "mask",
        **kwargs: Any,
    ) -> None:
        if pseudo_gt not in PSEUDO_GROUND_TRUTH_MODES:
            raise ValueError(f"pseudo_gt must be one of {PSEUDO_GROUND_TRUTH_MODES}, got {pseudo_gt!r}.")
        if posterior_target not in POSTERIOR_TARGETS:
            raise ValueError(f"posterior_target must be one of {POSTERIOR_TARGETS}, got {posterior_target!r}.")
        if not hasattr(network, "forward_train"):
            raise TypeError(f"MattingTrainer needs a network with forward_train(), got {type(network).__name__}.")
        if kwargs.get("accumulation_steps", 1) != 1:
            raise ValueError("MattingTrainer does not support gradient accumulation.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        self.pseudo_gt = pseudo_gt
        self.threshold_range = (float(threshold_range[0]), float(threshold_range[1]))
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.image_key, self.alpha_key, self.masks_key = image_key, alpha_key, masks_key
        self.cpu_bf16 = _switch(cpu_bf16, "cpu_bf16")
        self.train_step = train_step
        self.posterior_target = posterior_target

    def _iteration(self, engine: MattingTrainer, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device, nb = engine.state.device, engine.non_blocking
        image = _to(batchdata, engine.image_key, device, nb)
        alpha = _to(batchdata, engine.alpha_key, device, nb)
        masks = _to(batchdata, engine.masks_key, device, nb) if engine.pseudo_gt == "rater" else None
        low, high = engine.threshold_range
        seg_target = pseudo_ground_truth(
            engine.pseudo_gt, masks=masks, alpha=alpha, generator=engine.generator, low=low, high=high
        ).to(image.dtype)
        # what the posterior net is conditioned on; the cross-entropy target stays seg_target
        posterior_input = alpha.to(image.dtype) if engine.posterior_target == "alpha" else seg_target

        engine.state.output = {Keys.IMAGE: image, Keys.LABEL: alpha}
        engine.network.train()
        if engine.train_step is not None:
            engine.train_step.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        def _forward() -> dict:
            if engine.train_step is not None:  # network + loss in one forward (DistributedDataParallel)
                out, losses = engine.train_step(image, seg_target, alpha, engine.cpu_bf16, posterior_input)
            else:
                out = forward_train(engine.network, image, posterior_input, engine.cpu_bf16)
            engine.state.output[Keys.PRED] = out["alpha"]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            if engine.train_step is None:
                losses = engine.loss_function(out, alpha, seg_target)
            engine.state.output[Keys.LOSS] = losses["loss"]
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return losses

        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                losses = _forward()
            engine.scaler.scale(losses["loss"]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            losses = _forward()
            losses["loss"].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()

        for name, value in losses.items():
            engine.state.output[name] = value.detach()
        engine.state.output[Keys.PRED] = engine.state.output[Keys.PRED].detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class MattingEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` for ``MedicalMattingNet.predict``.

    One iteration (in ``eval`` mode, without gradients) runs ``network.predict(image,
    num_samples=num_samples)`` and leaves in ``engine.state.output``:

    - ``pred`` (B, 1, H, W) the predicted alpha, ``uncertainty`` (B, 1, H, W),
      ``sample_probs`` (B, N, H, W) the Prob. U-Net's prior sample probabilities;
    - ``label`` (B, 2, H, W) = [true alpha, unknown region] (the form ``MattingMetric`` takes from
      ``from_engine(["pred", "label"])``), ``alpha`` (B, 1, H, W), ``unknown`` (B, 1, H, W) float {0, 1}
      (``trimap == 128``), ``masks`` (B, K, H, W) the raters' masks;
    - ``image`` and ``case`` (the list of case names, when the batch has one).

    ``decollate`` defaults to ``False`` here: the metric and writer handlers of the configs take the
    batched dict.

    Args:
        device, val_data_loader, network: as for ``SupervisedEvaluator``; ``network`` must have
            ``predict``.
        inferer: returns ``network.predict``'s dict; default
            ``scripts.workflows.inference.MattingInferer()``, the inferer of CLI inference and of the
            MONAI Label app too (prior samples, test-time flips, output size are its options).
        image_key, alpha_key, masks_key, trimap_key, case_key: batch keys.
        kwargs: other ``SupervisedEvaluator`` arguments (``val_handlers``, ``key_val_metric``,
            ``additional_metrics``, ...).

    Example::

        evaluator = MattingEvaluator(device="cpu", val_data_loader=loader, network=net,
                                     key_val_metric={"sad": IgniteMetricHandler(MattingMetric("sad"),
                                                     output_transform=from_engine(["pred", "label"]))})
        evaluator.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Any,
        network: torch.nn.Module,
        inferer: Any = None,
        image_key: str = "image",
        alpha_key: str = "alpha",
        masks_key: str = "masks",
        trimap_key: str = "trimap",
        case_key: str = "case",
        decollate: bool = False,
        **kwargs: Any,
    ) -> None:
        if not hasattr(network, "predict"):
            raise TypeError(f"MattingEvaluator needs a network with predict(), got {type(network).__name__}.")
        super().__init__(
            device=device,
            val_data_loader=val_data_loader,
            network=network,
            inferer=MattingInferer() if inferer is None else inferer,
            decollate=decollate,
            **kwargs,
        )
        self.image_key, self.alpha_key, self.masks_key = image_key, alpha_key, masks_key
        self.trimap_key, self.case_key = trimap_key, case_key

    def _iteration(self, engine: MattingEvaluator, batchdata: dict[str, Any]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device, nb = engine.state.device, engine.non_blocking
        image = _to(batchdata, engine.image_key, device, nb)
        alpha = _to(batchdata, engine.alpha_key, device, nb)
        masks = _to(batchdata, engine.masks_key, device, nb)
        unknown = (_to(batchdata, engine.trimap_key, device, nb) == TRIMAP_UNKNOWN).to(alpha.dtype)
        engine.state.output = {
            Keys.IMAGE: image,
            Keys.LABEL: torch.cat([alpha, unknown], dim=1),
            "alpha": alpha,
            "unknown": unknown,
            "masks": masks,
        }
        if engine.case_key in batchdata:
            engine.state.output["case"] = list(batchdata[engine.case_key])
        out = run_matting_inferer(engine, image)
        engine.state.output[Keys.PRED] = out["alpha"].float()
        engine.state.output["uncertainty"] = out["uncertainty"].float()
        engine.state.output["sample_probs"] = out["sample_probs"].float()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class output_scalar:  # noqa: N801 (a picklable callable used like a function)
    """Callable reading one scalar from an engine output, batched dict or decollated list of dicts.

    ``output_scalar("loss")(engine.state.output)`` -> float. Used as ``output_transform`` of the
    loss averages, the progress bar and ``StatsHandler``.

    Example::

        output_scalar("l1")({"l1": torch.tensor(0.5)})  # 0.5
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, output: Any) -> float:
        if isinstance(output, (list, tuple)):
            if not output:
                raise ValueError(f"empty engine output, no {self.name!r}.")
            output = output[0]
        if not isinstance(output, dict) or self.name not in output:
            raise KeyError(f"the engine output has no {self.name!r} entry.")
        value = output[self.name]
        return float(value.item() if isinstance(value, torch.Tensor) else value)


def loss_averages(names: Sequence[str] = LOSS_NAMES, prefix: str = "train_epoch_") -> dict[str, Average]:
    """Ignite ``Average`` metrics of the trainer's scalar losses, one per name, keyed ``prefix + name``.

    Give them to ``MattingTrainer(additional_metrics=...)``: each epoch ``engine.state.metrics`` then
    holds the epoch means (``train_epoch_loss``, ``train_epoch_l1``, ...), which ``StatsHandler``
    prints and ``MLFlowHandler`` logs per epoch (step = epoch; MONAI's MLflow trainer handler logs
    the per-iteration loss as ``train_loss``, step = iteration).

    Example::

        trainer = MattingTrainer(..., additional_metrics=loss_averages())
    """
    return {f"{prefix}{name}": Average(output_transform=output_scalar(name)) for name in names}
