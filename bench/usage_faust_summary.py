"""Summarise the faust-meter kill runs (the JSON lines `test_usage_faust.py` appends).

Usage:
  CHATLOG_FAUST_RUNS=10 CHATLOG_FAUST_KILLS=5 CHATLOG_FAUST_GUARANTEE=at_least_once \\
  CHATLOG_FAUST_RESULTS=runs.jsonl .venv/bin/pytest -q tests/integration/processors/test_usage_faust.py
  .venv/bin/python bench/usage_faust_summary.py runs.jsonl

One markdown row per run: requests in the read model, in the meter's Postgres rows, in the
counting table (read back from its changelog) against the Postgres rows it should equal,
per-request table rows that differ from Postgres, and per restart the group's committed
offset at the kill, the seconds to table recovery and to the first batch, and the first
offset read (0 everywhere would mean the log was re-read from the start).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def row(run: int, d: dict[str, Any]) -> str:
    kills = d["kills"]
    committed = "/".join(str(k.get("committed", "")) for k in kills[:-1])
    recovered = "/".join(f"{k.get('recovered_s', '?')}" for k in kills)
    first = "/".join(f"{k.get('first_batch_s', k['resume_s'])}" for k in kills)
    daily = d["requests_daily_table"] - d["requests_pg_rows"]
    return (
        f"| {run} | {d['guarantee']} | {len(kills) - 1} | {d['requests_read_model']} "
        f"| {d['requests_meter'] - d['requests_read_model']:+d} | {daily:+d} "
        f"| {d['table_rows_differing_from_pg']} | {committed} | {recovered} | {first} "
        f"| {'/'.join(str(k['first_offset']) for k in kills)} |"
    )


def main(paths: list[str]) -> int:
    print("| run | guarantee | kills | requests | meter rows vs read model "
          "| counting table vs rows | table rows != pg | committed at each kill "
          "| recovery done (s after start) | first batch (s) | first offset read |")  # fmt: skip
    print("|" + "---|" * 11)
    n = 0
    for path in paths:
        with open(path) as f:
            for line in f:
                n += 1
                print(row(n, json.loads(line)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
