"""Measured transcription speeds (``calibrations``), per model, compute type and kind."""

from __future__ import annotations

from typing import cast

from whisperfarm.ledger.rows import CalibrationRecord, MeasuredSpeed
from whisperfarm.ledger.store import Store


class CalibrationStore(Store):
    def calibrations(self, model: str, compute_type: str) -> list[CalibrationRecord]:
        rows = self._rows(
            "SELECT * FROM calibrations WHERE model = ? AND compute_type = ?",
            (model, compute_type),
        )
        return cast(list[CalibrationRecord], rows)

    def fold_calibration(
        self,
        model: str,
        compute_type: str,
        kind: str,
        per_cpu: float,
        audio_seconds: float,
        history_cap: float = 3600.0,
    ) -> MeasuredSpeed:
        """Average a new speed measurement into the stored one, weighted by audio, with
        the history's weight capped so the figure follows change."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT per_cpu, audio_seconds, runs FROM calibrations"
                " WHERE model = ? AND compute_type = ? AND kind = ?",
                (model, compute_type, kind),
            ).fetchone()
            if row is not None:
                weight = min(row[1], history_cap)
                per_cpu = (row[0] * weight + per_cpu * audio_seconds) / (weight + audio_seconds)
                audio_seconds += row[1]
            runs = (row[2] if row is not None else 0) + 1
            conn.execute(
                "INSERT OR REPLACE INTO calibrations (model, compute_type, kind, per_cpu,"
                " audio_seconds, runs, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, compute_type, kind, per_cpu, audio_seconds, runs, self.clock()),
            )
        return {
            "model": model,
            "compute_type": compute_type,
            "kind": kind,
            "per_cpu": per_cpu,
            "audio_seconds": audio_seconds,
            "runs": runs,
        }
