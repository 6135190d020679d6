"""Data-parallel training with ``torchrun`` (``configs/multi_gpu_train.yaml``, docs/scaling.md).

Why a train-step module and not ``DistributedDataParallel(network)`` as in most model-zoo bundles:
``DistributedDataParallel`` averages the gradients of the parameters of the module it wraps, and
only for what runs through that module's ``forward``. Here the training pass is
``network.forward_train(image, seg_target)`` (``forward`` is prediction), and the loss
``MedicalMattingLoss`` has learned parameters of its own (the uncertainty weights ``log_var_seg``,
``log_var_mat``, optimised together with the network). Wrapping the network alone would leave the
loss weights unsynchronised (each rank would learn its own weighting) and would not hook
``forward_train``. :class:`MattingTrainStep` therefore holds the network *and* the loss; its
``forward`` is one training pass (``forward_train`` + loss), and it is this module that is wrapped:
every parameter the optimiser steps gets the gradient averaged over all ranks, in the same
all-reduce buckets, overlapped with the backward pass.

``find_unused_parameters`` stays ``False`` (the default of ``multi_gpu_train.yaml``): each parameter
of the network and the loss gets a gradient in every step -- checked by ``tests/test_distributed.py``
for every ``upsampling``, ``scales`` 1 and 3 and both ``weighting``s -- and the unused-parameter
search would cost a graph traversal per step. A network variant that leaves
parameters out of the loss makes ``DistributedDataParallel`` raise at the second step and name them;
set ``--ddp_find_unused_parameters True`` then.

The trainer keeps the plain network (``MattingTrainer(train_step=...)`` only routes the forward pass
through the wrapper): checkpoints, ``model.pt``, the optimiser and the evaluator see the same
network and parameter names as in a single-process run, so a model trained with ``torchrun`` is
loaded by ``configs/inference.yaml`` exactly like any other, and no ``module.`` prefix is ever saved.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from scripts.workflows.engines import forward_train

__all__ = ["MattingTrainStep", "init_distributed", "finalize_distributed", "local_device", "rank", "is_main_process", "reporting_handler",
           "handlers_of_this_rank", "rank_values"]

#: the environment variables torchrun sets for every worker
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class MattingTrainStep(torch.nn.Module):
    """One training pass as a module: ``network.forward_train`` followed by the loss.

    ``forward(image, seg_target, alpha, cpu_bf16=False, posterior_input=None)`` returns ``(out, losses)``: the
    ``forward_train`` dict (:func:`scripts.workflows.engines.forward_train`) and the loss dict (``losses["loss"]`` to back-propagate). Its parameters are the network's and the
    loss's, so ``DistributedDataParallel(MattingTrainStep(net, loss))`` averages the gradients of
    both (module docstring).

    Example::

        step = torch.nn.parallel.DistributedDataParallel(MattingTrainStep(net, MedicalMattingLoss()))
        out, losses = step(image, seg_target, alpha)
        losses["loss"].backward()
    """

    def __init__(self, network: torch.nn.Module, loss_function: torch.nn.Module) -> None:
        super().__init__()
        if not hasattr(network, "forward_train"):
            raise TypeError(f"MattingTrainStep needs a network with forward_train(), got {type(network).__name__}.")
        self.network = network
        self.loss_function = loss_function

    def forward(
        self, image: torch.Tensor, seg_target: torch.Tensor, alpha: torch.Tensor, cpu_bf16: bool = False,
        posterior_input: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        # the posterior is conditioned on posterior_input (default: seg_target, the cross-entropy target)
        out = forward_train(self.network, image, seg_target if posterior_input is None else posterior_input, cpu_bf16)
        return out, self.loss_function(out, alpha, seg_target)


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (``LOCAL_RANK`` set by torchrun, default 0), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> int:
    """Join the default process group of a ``torchrun`` job (once) and return this process's rank.

    ``backend``: ``None`` picks ``nccl`` when CUDA is available, else ``gloo``. On CUDA the process's
    device becomes ``cuda:<LOCAL_RANK>`` (``torch.cuda.set_device``), so that collectives and
    ``.cuda()`` calls without an index use the rank's own GPU.

    Raises:
        RuntimeError: the process was not started by ``torchrun`` (``RANK``, ``LOCAL_RANK`` or
            ``WORLD_SIZE`` unset), with the command to use.
    """
    if not dist.is_available():
        raise RuntimeError("configs/multi_gpu_train.yaml: this PyTorch build has no torch.distributed.")
    if not dist.is_initialized():
        missing = [name for name in TORCHRUN_ENV if name not in os.environ]
        if missing:
            raise RuntimeError(
                f"configs/multi_gpu_train.yaml must be started by torchrun ({', '.join(missing)} unset): "
                "torchrun --nproc_per_node=N -m monai.bundle run --config_file "
                "\"['configs/train.yaml','configs/multi_gpu_train.yaml']\" ... (docs/scaling.md)"
            )
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(local_device())
        dist.init_process_group(backend=backend)
    return dist.get_rank()


def finalize_distributed() -> None:
    """Leave the process group (if any) so that a later workflow in the same process runs single-process.

    Ignite adopts an initialised process group as its distributed context the first time MONAI asks it
    for the world size (metrics, handlers); ``idist.finalize()`` destroys the group through ignite and
    puts ignite back to its serial context, where a bare ``destroy_process_group`` would leave ignite
    asking a destroyed group for its size.
    """
    import ignite.distributed as idist

    idist.finalize()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the default process group; 0 when there is none (a single-process run)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """``True`` in a single-process run and on rank 0 of a distributed one: the process that writes outputs."""
    return rank() == 0


def _reporting_types() -> tuple[type, ...]:
    """The handler types that only report: printing, progress bars, experiment trackers."""
    from ignite.handlers import ProgressBar
    from monai.handlers import ClearMLHandler, MLFlowHandler, StatsHandler, TensorBoardHandler

    from scripts.handlers.progress import ProgressBarHandler

    return (StatsHandler, TensorBoardHandler, MLFlowHandler, ClearMLHandler, ProgressBarHandler, ProgressBar)


def reporting_handler(handler: Any) -> bool:
    """Whether ``handler`` only reports: prints, draws a progress bar or logs to an experiment tracker."""
    return isinstance(handler, _reporting_types())


def handlers_of_this_rank(handlers: list | None, is_main: Callable[[], bool] = is_main_process) -> list | None:
    """The handlers this rank attaches: all of them on rank 0, all but the reporting ones elsewhere.

    What changes the training state or takes part in a collective operation stays on every rank:
    the learning-rate scheduler, validation (its metrics are gathered across ranks), checkpoint
    loading (``TrainingCheckpointHandler`` writes on rank 0 only), early stopping and any handler
    not known to only report -- a handler that ran on one rank only would let the ranks drift
    apart or wait for each other forever. Reporters run once, on rank 0, so that a line, a progress
    bar or a tracked value appears once. Experiment trackers that write from their constructor
    (MLflow) are better not built at all on the other ranks: ``configs/mlflow.yaml`` disables them
    there with ``_disabled_``.
    """
    if handlers is None or is_main():
        return handlers
    return [h for h in handlers if not reporting_handler(h)]


def rank_values(value: int) -> list[int]:
    """``value`` of every rank (all-gathered; ``[value]`` without a process group). Every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()):
        return [int(value)]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    gathered = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.tensor([int(value)], dtype=torch.int64, device=device))
    return [int(t.item()) for t in gathered]
