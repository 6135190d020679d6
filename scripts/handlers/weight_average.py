"""Exponential moving average (EMA) of the network's weights during training.

The averaging itself is PyTorch's :class:`torch.optim.swa_utils.AveragedModel` with
:func:`torch.optim.swa_utils.get_ema_multi_avg_fn`; this module only wires it to an Ignite engine
(MONAI has no EMA handler) and makes it part of the resumable training state.

After every iteration the average is updated; when training completes the network takes the
averaged weights, so the final ``model.pt`` (written by
:class:`scripts.handlers.checkpoint.TrainingCheckpointHandler` afterwards) is the averaged model.
Attach this handler *before* the checkpoint handler (list it first in ``train#handlers``) so that
it runs first on ``COMPLETED``.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

__all__ = ["WeightEMAHandler"]


class WeightEMAHandler:
    """Keep an exponential moving average of ``network``'s weights; load it into ``network`` at the end.

    Args:
        network: the trained network (its parameters and buffers are averaged).
        decay: EMA decay per iteration, ``avg = decay * avg + (1 - decay) * current``; ``0`` turns the
            handler off (nothing is attached, the network keeps its last weights).
        start_iteration: iterations trained before the average starts (the first update copies the
            weights); lets the average skip the early, far-from-converged weights.

    The handler has ``state_dict`` / ``load_state_dict``: put it in the checkpoint handler's
    ``save_dict`` so that an interrupted run resumes with its average.

    Example::

        ema = WeightEMAHandler(net, decay=0.99)
        ema.attach(trainer)             # before TrainingCheckpointHandler(...).attach(trainer)
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.99, start_iteration: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}.")
        if start_iteration < 0:
            raise ValueError(f"start_iteration must be >= 0, got {start_iteration}.")
        self.network = network
        self.decay = float(decay)
        self.start_iteration = int(start_iteration)
        self.average = (
            AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
            if self.decay > 0
            else None
        )

    def attach(self, engine: Engine) -> None:
        if self.average is None:
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.COMPLETED, self.apply)

    def update(self, engine: Engine) -> None:
        """Fold the network's current weights into the average."""
        if self.average is not None and engine.state.iteration > self.start_iteration:
            self.average.update_parameters(self.network)

    @torch.no_grad()
    def apply(self, engine: Engine | None = None) -> None:
        """Copy the averaged weights and buffers into the network (nothing before the first update)."""
        if self.average is None or int(self.average.n_averaged) == 0:
            return
        averaged = self.average.module
        for target, source in zip(self.network.parameters(), averaged.parameters()):
            target.copy_(source)
        for target, source in zip(self.network.buffers(), averaged.buffers()):
            target.copy_(source)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.average is None else self.average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.average is not None and state:
            self.average.load_state_dict(state)
