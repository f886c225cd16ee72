"""Run logs: a metrics CSV (rows past a resumed step are dropped) and TensorBoard scalars."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

log = logging.getLogger("cebench")


class RunLogger:
    """Writes `metrics.csv` and TensorBoard events under a run directory (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.rows: list[dict] = self._read(resume_step) if enabled else []
        self.fields: list[str] = list(dict.fromkeys(k for r in self.rows for k in r))
        self.tb = None
        if enabled:
            self._rewrite()
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events a crashed run wrote after its last checkpoint.
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step or None)

    def _read(self, resume_step: int) -> list[dict]:
        if not self.path.is_file() or resume_step == 0:
            return []
        with open(self.path, newline="") as f:
            return [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields or ["step"])
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one row and the TensorBoard scalars."""
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        self.rows.append(row)
        if any(k not in self.fields for k in row):
            self.fields = list(dict.fromkeys([*self.fields, *row]))
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.tb is not None:
            self.tb.close()
