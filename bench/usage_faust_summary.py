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
    first = "/".join(f"{k.get('first_batch_s') or k.get('resume_s')}" for k in kills)
    daily = d["requests_daily_table"] - d["requests_pg_rows"]
    return (
        f"| {run} | {d['guarantee']} {d.get('batch', 5)} | {len(kills) - 1} | {d['requests_read_model']} "
        f"| {d['requests_meter'] - d['requests_read_model']:+d} | {daily:+d} "
        f"| {d['table_rows_differing_from_pg']} | {committed} | {recovered} | {first} "
        f"| {'/'.join(str(k['first_offset']) for k in kills)} |"
    )


def totals(runs: list[dict[str, Any]]) -> str:
    """Per guarantee and batch mode: runs, runs that lost, requests lost, counts above truth."""
    out = ["", "| guarantee | batch | runs | kills | runs losing meter rows | requests lost "
           "(meter) | runs losing in the counting table | requests lost (counting table) "
           "| keys above the truth | stalls restarted |", "|" + "---|" * 10]  # fmt: skip
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for d in runs:
        groups.setdefault((d["guarantee"], d.get("batch", 5)), []).append(d)
    for (guarantee, batch), ds in sorted(groups.items()):
        meter = [d["requests_read_model"] - d["requests_meter"] for d in ds]
        daily = [d["requests_pg_rows"] - d["requests_daily_table"] for d in ds]
        over = sum(len(d.get("meter_over", [])) + len(d.get("daily_table_over", [])) for d in ds)
        out.append(f"| {guarantee} | {batch} | {len(ds)} | {sum(len(d['kills']) - 1 for d in ds)} "
                   f"| {sum(1 for m in meter if m)} | {sum(meter)} | {sum(1 for x in daily if x)} "
                   f"| {sum(daily)} | {over} "
                   f"| {sum(d['kills'][-1].get('stalls', 0) for d in ds)} |")  # fmt: skip
    return "\n".join(out)


def main(paths: list[str]) -> int:
    print("| run | guarantee, batch | kills | requests | meter rows vs read model "
          "| counting table vs rows | table rows != pg | committed at each kill "
          "| recovery done (s after start) | first batch (s) | first offset read |")  # fmt: skip
    print("|" + "---|" * 11)
    runs: list[dict[str, Any]] = []
    for path in paths:
        with open(path) as f:
            runs += [json.loads(line) for line in f]
    for n, d in enumerate(runs, 1):
        print(row(n, d))
    print(totals(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
