"""Per-file outcome of inference over a folder: ``OUTPUT_DIR/inference_summary.json``, and a non-zero exit.

One unreadable or wrong-shaped file must not abort the others: ``CatchFailuresd``
(``scripts.workflows.failures``) and ``MattingInferenceEvaluator`` (``scripts.workflows.inference``)
turn its error into a recorded failure; this handler logs each failure (file and reason) when it
happens, writes the summary when the run completes, and then raises :class:`InferenceFailedError` when any file failed, so
``python -m monai.bundle run inference`` exits non-zero after processing every good file.

Summary file::

    {"total": 5, "succeeded": 4, "failed": 1,
     "files": [{"file": ".../a.png", "case": "a", "status": "ok"},
               {"file": ".../b.png", "case": "b", "status": "failed", "reason": "..."}, ...]}
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ignite.engine import Engine, Events

from scripts.workflows.failures import FAILURE_KEY, source_file

__all__ = ["InferenceFailedError", "InferenceSummary", "SUMMARY_FILE"]

#: file name of the summary in the output folder
SUMMARY_FILE = "inference_summary.json"


class InferenceFailedError(RuntimeError):
    """Some input files could not be processed (the others were); the summary file says which and why."""


def _items(output: Any) -> List[Mapping[str, Any]]:
    if isinstance(output, Mapping):
        return [output]
    return [o for o in output or [] if isinstance(o, Mapping)]


class InferenceSummary:
    """Record every input's outcome; write the summary at ``COMPLETED``; raise when anything failed.

    Args:
        output_dir: folder of the summary file (the inference output folder).
        name: logger name (default: the engine's logger).
        raise_on_failure: raise :class:`InferenceFailedError` at ``COMPLETED`` when a file failed.

    Example (``handlers`` of configs/inference.yaml)::

        {"_target_": "scripts.handlers.inference_summary.InferenceSummary", "output_dir": "@output_dir"}
    """

    def __init__(self, output_dir: Union[str, os.PathLike], name: Optional[str] = None,
                 raise_on_failure: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.name = name
        self.raise_on_failure = raise_on_failure
        self.records: List[Dict[str, Any]] = []
        self.logger = logging.getLogger(name) if name else None

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self.records = []

    def _record(self, item: Mapping[str, Any], reason: Optional[str]) -> None:
        record = {"file": source_file(item), "case": item.get("case"), "status": "failed" if reason else "ok"}
        if reason:
            record["reason"] = reason
            self.logger.error(f"inference failed for {record['file']}: {reason}")
        self.records.append(record)

    def iteration_completed(self, engine: Engine) -> None:
        for item in getattr(engine.state, "inference_failures", None) or []:
            self._record(item, str(item.get(FAILURE_KEY) or "failed"))
        for item in getattr(engine.state, "inference_volumes", None) or []:  # written slice by slice
            self._record(item, None)
        for item in _items(engine.state.output):
            self._record(item, item.get(FAILURE_KEY))

    def summary(self) -> Dict[str, Any]:
        failed = sum(r["status"] == "failed" for r in self.records)
        return {"total": len(self.records), "succeeded": len(self.records) - failed, "failed": failed,
                "files": list(self.records)}

    def completed(self, engine: Engine) -> None:
        from scripts.atomic import write_text_atomic

        summary = self.summary()
        path = self.output_dir / SUMMARY_FILE
        write_text_atomic(path, json.dumps(summary, indent=2) + "\n")
        (self.logger.warning if summary["failed"] else self.logger.info)(
            f"inference: {summary['succeeded']} of {summary['total']} file(s) written, {summary['failed']} failed "
            f"(summary: {path})")
        if summary["failed"] and self.raise_on_failure:
            named = "; ".join(f"{Path(r['file']).name}: {r.get('reason', 'failed')}" for r in self.records
                              if r["status"] == "failed")
            raise InferenceFailedError(
                f"{summary['failed']} of {summary['total']} input file(s) failed ({named}); the other "
                f"{summary['succeeded']} were written (summary: {path})")
