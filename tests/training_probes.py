"""Test helpers loaded into bundle runs by tests/test_distributed.py (a config appended to the config list).

``patch_random_draws()``: the model's training pass without random draws. Data-parallel ranks
draw the posterior and prior samples from their own random streams (``seed + rank``), which no
single process can reproduce; to compare a two-rank run with a one-process run step by step, both
replace these draws by their mean (``eps = 0``): the posterior sample becomes the posterior mean
and every prior sample the prior mean. Everything else (the network, the loss and its learned
weights, the optimiser, the data order) is untouched.

``print_epoch_metrics(trainer, validator)``: prints ``EPOCH_METRICS {json}`` with the engines' epoch metrics
at full precision after every epoch (the console summary rounds to 4 digits).

``print_parameter_sums(trainer, network, loss)``: prints ``PARAMETER_SUMS {json}`` after every epoch, the
float64 sum of every parameter, so that the ranks of a data-parallel run can be checked to hold the
same weights.

Example (a config appended after train.yaml)::

    +imports:
      - $import training_probes
    +initialize:
      - $training_probes.patch_random_draws()
      - $training_probes.print_epoch_metrics(@train#trainer, @validate#evaluator)
"""

from __future__ import annotations

import json

import torch
from ignite.engine import Engine, Events

from scripts.networks.medical_matting_net import MedicalMattingNet

#: the prefixes of the printed lines
PREFIX = "EPOCH_METRICS "
SUMS_PREFIX = "PARAMETER_SUMS "


def _mean_sample(self: torch.distributions.Normal, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
    return self.loc.expand(self._extended_shape(sample_shape))


def _zero_noise(self: MedicalMattingNet, batch: int, num_samples: int, like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(batch, num_samples, self.prob_unet.latent_dim)


def patch_random_draws() -> None:
    """Posterior samples = posterior mean, prior noise = 0, in this process."""
    torch.distributions.Normal.rsample = _mean_sample
    MedicalMattingNet._prior_noise = _zero_noise


def print_epoch_metrics(*engines: Engine) -> None:
    """After every epoch print ``EPOCH_METRICS {"epoch": n, name: value, ...}`` (after the metrics are computed).

    A validator run by MONAI's ``ValidationHandler`` counts the trainer's epochs: give both.
    """

    def show(engine: Engine) -> None:
        metrics = {k: float(v) for k, v in engine.state.metrics.items()}
        print(PREFIX + json.dumps({"epoch": engine.state.epoch, **metrics}), flush=True)

    for engine in engines:
        engine.add_event_handler(Events.EPOCH_COMPLETED, show)


def read_epoch_metrics(text: str) -> dict[int, dict[str, float]]:
    """The ``EPOCH_METRICS`` lines of a run's output as ``{epoch: {name: value}}``."""
    found = {}
    for line in text.splitlines():
        if line.startswith(PREFIX):
            row = json.loads(line[len(PREFIX):])
            found.setdefault(row.pop("epoch"), {}).update(row)  # trainer and validator of one epoch
    return found


def print_parameter_sums(trainer: Engine, *modules: torch.nn.Module) -> None:
    """After every epoch print ``PARAMETER_SUMS {"epoch": n, "<i>.<name>": sum, ...}`` (float64 sums)."""

    def show(engine: Engine) -> None:
        sums = {f"{i}.{name}": float(p.detach().double().sum())
                for i, module in enumerate(modules) for name, p in module.named_parameters()}
        print(SUMS_PREFIX + json.dumps({"epoch": engine.state.epoch, **sums}), flush=True)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, show)


def read_parameter_sums(text: str) -> dict[int, dict[str, float]]:
    """The ``PARAMETER_SUMS`` lines of a run's output as ``{epoch: {name: sum}}``."""
    return {row.pop("epoch"): row for row in (json.loads(line[len(SUMS_PREFIX):])
                                             for line in text.splitlines() if line.startswith(SUMS_PREFIX))}
