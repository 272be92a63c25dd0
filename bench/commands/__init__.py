"""The benchmark commands of `adaptcast` (`bench`, `bench-*`, `gpu-checks`), registered through the
entry-point group `adaptcast.commands` (bench/pyproject.toml). Like the built-in commands, each
module imports torch and the benchmark modules inside `run`, so that listing commands stays fast."""

from __future__ import annotations

import datetime
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def write_report(path: str, title: str, table: str, rows: list[Any]) -> None:
    """Write a Markdown report (with command, machine and date) and the rows as JSON beside it;
    print the table."""
    from adaptcast_bench.speed import machine_description

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        f"# {title}\n\n"
        f"Command: `adaptcast {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {machine_description()}  \nDate: {datetime.date.today()}\n\n{table}\n"
    )
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(table)
