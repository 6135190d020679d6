"""Atomic, resumable training checkpoints and the final ``model.pt``.

Why not MONAI's ``CheckpointSaver`` + ``CheckpointLoader``: checked with MONAI 1.6.1 / Ignite 0.5,
``CheckpointSaver`` writes through ``DiskSaver(atomic=False)`` (a run killed while writing leaves a
truncated file under the final name), Ignite's ``Checkpoint`` deletes the previous file *before*
writing the next one (a kill in between leaves no checkpoint at all), a resumed run does not know
the files of the previous process (they pile up), and neither handler can put the engine it is
attached to into the checkpoint from a bundle config (the trainer cannot reference itself).
``CheckpointLoader`` itself is safe (``torch.load(weights_only=True)``) and this handler loads the
same way.

:class:`TrainingCheckpointHandler` therefore

- on ``STARTED``: finds the newest ``checkpoint_epoch=<N>.pt`` in ``ckpt_dir`` and, when there is
  one, restores every object of ``save_dict`` plus the trainer's state (epoch and iteration
  counters) with ``torch.load(weights_only=True)``, so training continues at epoch N + 1 -- no epoch
  is repeated or skipped; a checkpoint written for another fold or training set (``fingerprint``)
  is refused with a clear error;
- every ``save_interval`` epochs (and at the end): writes ``checkpoint_epoch=<N>.pt`` to a
  temporary file in ``ckpt_dir``, ``fsync``s it and ``os.replace``s it into place, then deletes the
  older checkpoints (the new one exists before an old one goes: a kill at any moment leaves at
  least one complete checkpoint);
- on ``COMPLETED``: writes the network's ``state_dict`` to ``ckpt_dir/model.pt`` (atomically).

Every checkpoint also holds the random states of the run at the end of its epoch
(:func:`random_states`: PyTorch's CPU and CUDA generators, NumPy's and Python's global ones, the
data loader's shuffling generator, every random transform of the training data and the trainer's
own generators), restored on
resume: a run killed at any point and resumed draws the same shuffles, augmentations and samples
as an uninterrupted one and ends with its weights (with ``num_workers: 0``; worker processes keep
their own generators).

In a distributed run (``torchrun``, ``configs/multi_gpu_train.yaml``) every rank loads the same
checkpoint at start (and the ranks check that they resumed from the same epoch: ``ckpt_dir`` must
be one folder shared by all nodes), and rank 0 alone writes checkpoints and ``model.pt``.

Example::

    handler = TrainingCheckpointHandler("models", {"network": net, "optimizer": opt,
                                        "lr_scheduler": sched, "loss": loss_fn})
    handler.attach(trainer)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from scripts.atomic import atomic_write, remove_stale_temporaries
from scripts.workflows.distributed import is_main_process, rank_values

__all__ = ["CHECKPOINT_PATTERN", "TrainingCheckpointHandler", "find_checkpoints", "fingerprint_differences",
           "latest_checkpoint", "random_states", "restore_random_states", "save_atomic"]

#: file names of the training checkpoints (the epoch number after ``=``)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")
#: attributes of learning-rate schedulers that describe the planned schedule, not its progress
_SCHEDULE_LENGTH_ATTRS = ("t_total", "warmup_steps", "T_max", "total_iters", "total_steps")


def find_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """All ``checkpoint_epoch=<N>.pt`` files of ``ckpt_dir`` as ``(N, path)``, oldest first ([] if none)."""
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest training checkpoint of ``ckpt_dir`` or ``None``.

    Example::

        latest_checkpoint("models")  # PosixPath('models/checkpoint_epoch=12.pt')
    """
    found = find_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`scripts.atomic.atomic_write`).

    Readers never see a half-written file; a crash leaves at most a hidden ``.<name>.<hex>.tmp``
    file that :class:`TrainingCheckpointHandler` removes at its next start.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


_ABSENT = object()


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any], limit: int = 60) -> dict[str, str]:
    """The entries in which two run fingerprints differ, sorted by key, each described as
    ``"<key>: <saved value> there, <current value> now"`` (``absent`` for a missing entry; values cut to
    ``limit`` characters: a fingerprint's case list can be long). Empty when they are equal.

    Example::

        >>> fingerprint_differences({"fold": 0}, {"fold": 0, "seed": 1})
        {'seed': 'seed: absent there, 1 now'}
    """
    def shown(value: Any) -> str:
        text = "absent" if value is _ABSENT else repr(value)
        return text if len(text) <= limit else text[: limit - 3] + "..."

    differ = {}
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if old is _ABSENT or new is _ABSENT or old != new:
            differ[key] = f"{key}: {shown(old)} there, {shown(new)} now"
    return differ


def _state_of(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def _random_transforms(transform: Any) -> list:
    """Every MONAI ``Randomizable`` in a (nested) ``Compose``, in a fixed order, the ones held inside
    other transforms included (``Rand2DElasticd`` draws through its ``Rand2DElastic`` and that one's
    grid transforms, each with its own generator)."""
    from monai.transforms import Randomizable

    found, seen = [], set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or id(obj) in seen or depth > 8:
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
            return
        if not hasattr(obj, "__dict__") or isinstance(obj, (torch.Tensor, torch.nn.Module)):
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        for name in sorted(vars(obj)):
            value = vars(obj)[name]
            if name != "R" and (isinstance(value, (list, tuple)) or type(value).__module__.startswith(("monai", "scripts"))):
                visit(value, depth + 1)

    visit(transform, 0)
    return found


def _numpy_state(state: tuple) -> dict:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_back(state: Mapping[str, Any]) -> tuple:
    import numpy as np

    return (state["kind"], state["keys"].numpy().astype(np.uint32), int(state["pos"]), int(state["has_gauss"]),
            float(state["cached"]))


def random_states(engine: Engine) -> dict[str, Any]:
    """Every random state the next epoch of ``engine`` draws from, in a form ``torch.load(weights_only=True)`` reads."""
    import random

    import numpy as np

    python = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(np.random.get_state()),
        "python": {"version": int(python[0]), "state": torch.tensor(python[1], dtype=torch.int64)},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    loader = getattr(engine.state, "dataloader", None)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        states["loader"] = generator.get_state()
    dataset = getattr(loader, "dataset", None)
    states["transforms"] = [_numpy_state(t.R.get_state()) for t in _random_transforms(getattr(dataset, "transform", None))]
    # the engine's own generators (MattingTrainer draws its pseudo ground-truth thresholds from one)
    states["engine"] = {name: value.get_state() for name, value in sorted(vars(engine).items())
                        if isinstance(value, torch.Generator)}
    return states


def restore_random_states(engine: Engine, states: Mapping[str, Any]) -> None:
    """Set the random states saved by :func:`random_states` (a different transform list is an error)."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    np.random.set_state(_numpy_state_back(states["numpy"]))
    random.setstate((states["python"]["version"], tuple(int(v) for v in states["python"]["state"].tolist()), None))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    loader = getattr(engine.state, "dataloader", None)
    generator = getattr(loader, "generator", None)
    if "loader" in states and isinstance(generator, torch.Generator):
        generator.set_state(states["loader"])
    transforms = _random_transforms(getattr(getattr(loader, "dataset", None), "transform", None))
    saved = states.get("transforms", [])
    if len(saved) != len(transforms):
        raise ValueError(f"the checkpoint holds the random states of {len(saved)} random transform(s), the training "
                         f"data has {len(transforms)}: it was written by another pipeline")
    for t, state in zip(transforms, saved):
        t.R.set_state(_numpy_state_back(state))
    for name, state in states.get("engine", {}).items():
        generator = getattr(engine, name, None)
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"the checkpoint holds the state of the trainer's generator {name!r}, which this trainer lacks")
        generator.set_state(state)


class TrainingCheckpointHandler:
    """Save and resume the whole training state atomically; write the final network weights.

    Args:
        ckpt_dir: folder of the checkpoints (created when missing).
        save_dict: objects with ``state_dict`` / ``load_state_dict`` to save and restore, e.g.
            ``{"network": net, "optimizer": opt, "lr_scheduler": sched, "loss": loss_fn}``; the
            engine the handler is attached to is added as ``"trainer"``.
        save_interval: save every this many epochs (the last epoch is always saved).
        n_saved: how many of the newest checkpoints to keep (>= 1).
        resume: restore the newest checkpoint of ``ckpt_dir`` at start (``False``: start from scratch
            even when checkpoints exist; they are replaced as training goes).
        final_filename: file of the final weights in ``ckpt_dir`` (``None``: do not write it).
        final_key: the ``save_dict`` entry whose ``state_dict`` is the final file.
        fingerprint: what identifies the training run (e.g. ``{"fold": 0, "train_cases": [...]}``);
            stored in every checkpoint and compared when resuming: a mismatch raises a
            ``ValueError`` naming the file and the differing entries.
        keep_schedule_length: after restoring a learning-rate scheduler, keep this run's planned
            length (``t_total``, ``warmup_steps``, ...) so that a run can be extended by a larger
            ``epochs``; the step counter and the base learning rates come from the checkpoint.
        map_location: ``torch.load`` device mapping.

    Example::

        TrainingCheckpointHandler("models", {"network": net, "optimizer": opt}).attach(trainer)
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 1,
        n_saved: int = 1,
        resume: bool = True,
        final_filename: str | None = "model.pt",
        final_key: str = "network",
        fingerprint: Mapping[str, Any] | None = None,
        keep_schedule_length: bool = True,
        map_location: Any = "cpu",
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}.")
        if n_saved < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}.")
        if "trainer" in save_dict:
            raise ValueError("save_dict must not hold 'trainer': the engine the handler is attached to is added.")
        if final_filename is not None and final_key not in save_dict:
            raise ValueError(f"final_key {final_key!r} is not in save_dict (keys: {sorted(save_dict)}).")
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.n_saved = int(n_saved)
        self.resume = bool(resume)
        self.final_filename = final_filename
        self.final_key = final_key
        self.fingerprint = dict(fingerprint) if fingerprint is not None else None
        self.keep_schedule_length = keep_schedule_length
        self.map_location = map_location
        self.logger = logging.getLogger(__name__)
        self.resumed_from: Path | None = None
        self._last_saved_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        """Register ``load`` (STARTED), ``save`` (EPOCH_COMPLETED every ``save_interval``) and ``complete``.

        ``save`` is registered when the engine starts, i.e. after every other handler (MONAI's
        ``MLFlowHandler`` is appended to the handler list by ``--tracking``): an epoch's checkpoint is
        written only once everything else of that epoch (validation, logging) is done, so a run
        killed at any moment repeats no logged epoch and skips none.
        """
        self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    # ------------------------------------------------------------------ resume
    def _remove_stale_tmp(self) -> None:
        # the temporaries of a killed run (atomic_write names them with the writer's pid)
        remove_stale_temporaries(self.ckpt_dir)

    def load(self, engine: Engine) -> None:
        """Restore the newest checkpoint of ``ckpt_dir`` into ``save_dict`` and the engine (if any)."""
        if not engine.has_event_handler(self.save):
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        if is_main_process():
            self._remove_stale_tmp()
        found = find_checkpoints(self.ckpt_dir) if self.resume else []
        path = found[-1][1] if found else None
        epochs = rank_values(found[-1][0] if found else -1)  # also a barrier: no rank writes before all have read
        if len(set(epochs)) > 1:
            raise RuntimeError(
                f"the ranks found different newest checkpoints in ckpt_dir {self.ckpt_dir} (epoch per rank, -1 = none: "
                f"{epochs}); every rank must see the same ckpt_dir (a folder shared by all nodes)."
            )
        if path is None:
            return
        try:
            checkpoint = torch.load(path, map_location=self.map_location, weights_only=True)
        except Exception as e:  # a corrupt file cannot come from save_atomic, but say which file it is
            lines = str(e).strip().splitlines()
            reason = lines[0] if lines else f"{type(e).__name__} (empty or truncated file)"
            raise RuntimeError(f"cannot read the training checkpoint {path}: {reason}; delete it to start "
                               "again from the previous one (or from scratch)") from e
        # an object with nothing to restore (e.g. the weight average switched off) may be absent:
        # checkpoints written before it existed still resume
        missing = [k for k in (*self.save_dict, "trainer") if k not in checkpoint
                   and (k == "trainer" or _state_of(self.save_dict[k]) != {})]
        if missing:
            raise ValueError(f"training checkpoint {path} lacks {missing}; delete it or use another ckpt_dir.")
        if self.fingerprint is not None:
            diff = fingerprint_differences(checkpoint.get("fingerprint") or {}, self.fingerprint)
            if diff:
                raise ValueError(
                    f"training checkpoint {path} belongs to another run (differs in {list(diff)}: "
                    f"{'; '.join(diff.values())}); "
                    "use another ckpt_dir, or delete its checkpoint_epoch=*.pt files to start again."
                )
        kept = {}
        if self.keep_schedule_length:
            for name, obj in self.save_dict.items():
                kept[name] = {a: getattr(obj, a) for a in _SCHEDULE_LENGTH_ATTRS if hasattr(obj, a)}
        for name, obj in self.save_dict.items():
            if name not in checkpoint:  # nothing to restore (see missing above)
                continue
            obj.load_state_dict(checkpoint[name])
            for attr, value in kept.get(name, {}).items():
                setattr(obj, attr, value)
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(checkpoint["trainer"])
        if max_epochs is not None:
            if engine.state.epoch > max_epochs:
                raise ValueError(
                    f"training checkpoint {path} is at epoch {engine.state.epoch}, beyond epochs={max_epochs}; "
                    "raise epochs or use another ckpt_dir."
                )
            engine.state.max_epochs = max_epochs
        if "random_states" in checkpoint:  # checkpoints written before they were saved resume inexactly
            restore_random_states(engine, checkpoint["random_states"])
        self.resumed_from = path
        self._last_saved_epoch = engine.state.epoch
        self.logger.info(f"resumed training from {path} (epoch {engine.state.epoch} of {engine.state.max_epochs})")

    # ------------------------------------------------------------------ save
    def save(self, engine: Engine) -> Path | None:
        """Write ``checkpoint_epoch=<epoch>.pt`` atomically, then delete all but the ``n_saved`` newest.

        On the ranks other than 0 of a distributed run nothing is written (``None``): rank 0 writes.
        """
        epoch = int(engine.state.epoch)
        if not is_main_process():
            self._last_saved_epoch = epoch
            return None
        checkpoint = {name: _state_of(obj) for name, obj in self.save_dict.items()}
        checkpoint["trainer"] = engine.state_dict()
        checkpoint["random_states"] = random_states(engine)
        if self.fingerprint is not None:
            checkpoint["fingerprint"] = self.fingerprint
        path = save_atomic(checkpoint, self.ckpt_dir / f"checkpoint_epoch={epoch}.pt")
        for _, old in find_checkpoints(self.ckpt_dir)[: -self.n_saved]:
            if old != path:
                old.unlink(missing_ok=True)
        self._last_saved_epoch = epoch
        return path

    def complete(self, engine: Engine) -> None:
        """Save the last epoch (if not yet saved) and write the final weights ``final_filename``."""
        if self._last_saved_epoch != engine.state.epoch and engine.state.epoch > 0:
            self.save(engine)
        if self.final_filename is not None and is_main_process():
            final = save_atomic(_state_of(self.save_dict[self.final_key]), self.ckpt_dir / self.final_filename)
            self.logger.info(f"saved the final weights to {final}")
