"""How long each lesson's cells ran when its committed outputs were made.

    jupyter nbconvert --to notebook --execute --inplace lessons/05_text_to_video.ipynb   # (re)make one
    python benchmarks/lesson_times.py                                                   # the table

Jupyter records when each cell started and finished (the cell's metadata.execution); this sums
them per notebook, so the figure is the cells' own time, without the kernel's start-up. Lessons are
executed on 2 CPU cores with nothing else running before they are committed.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

LESSONS = Path(__file__).resolve().parents[1] / "lessons"


def cell_seconds(cell: dict) -> float | None:
    """The seconds from the cell's start to its reply, or None for a cell that was not executed."""
    times = cell.get("metadata", {}).get("execution", {})
    if "iopub.execute_input" not in times or "shell.execute_reply" not in times:
        return None
    start, end = (datetime.fromisoformat(times[key].replace("Z", "+00:00"))
                  for key in ("iopub.execute_input", "shell.execute_reply"))
    return (end - start).total_seconds()


def main() -> None:
    print("| lesson | code cells | cells executed | seconds | minutes |\n|---|---|---|---|---|")
    for path in sorted(LESSONS.glob("*.ipynb")):
        code = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
        seconds = [s for s in map(cell_seconds, code) if s is not None]
        print(f"| {path.name} | {len(code)} | {len(seconds)} | {sum(seconds):.0f} | {sum(seconds) / 60:.1f} |")


if __name__ == "__main__":
    main()
