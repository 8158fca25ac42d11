"""Run statistics as JSON lines (``RUN/log.jsonl``), one object per logged step, hierarchical keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from attnsynth.utils.io import atomic_write_text


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``log.jsonl`` (empty list if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class RunLog:
    """Append-only JSONL writer; on resume it first drops records past the resumed step."""

    def __init__(self, path: str | Path, *, keep_until_step: int | None = None) -> None:
        self.path = Path(path)
        if keep_until_step is not None and self.path.is_file():
            kept = [r for r in read_log(self.path) if int(r.get("step", 0)) <= keep_until_step]
            atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        elif keep_until_step is None and self.path.is_file():
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (e.g. ``{"step": 10, "loss/G/att": 0.69}``) and flush it to disk."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(dict(record), sort_keys=True) + "\n")
