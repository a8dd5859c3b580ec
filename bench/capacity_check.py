"""The capacity model's scaled-down check (docs/capacity.md, issue #17): predicted versus
measured CPU per prompt of each service, at two load levels, on this machine.

Runs `bench/pipeline.py`'s open loop (scripted engine, through the gateway) once per rate,
each on a fresh system, and sets beside each service's measured CPU per prompt what the
model predicts from its per-event figures (`UNIT_COSTS`, measured by the component
benches in docs/benchmarks.md) and from the chunker's pace (`inference/chunker.py`):

    flock /tmp/chatlog-bench.lock env CHATLOG_TEST_KEEP=1 .venv/bin/python bench/capacity_check.py \
        --rates 5 10 --duration 20 --json /tmp/capacity.json

A ratio far from 1 is a cost the model leaves out, or one it gets wrong.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Per-event CPU figures of docs/capacity.md §1 (µs of one core, measured by the component
# benches at their saturating loads).
UNIT_COSTS = {
    "accept_us": 220.0,  # command API, one accepted prompt (server side)
    "hub_read_us": 5.0,  # query API hub, one chat.completions record (every process)
    "fanout_us": 35.0,  # query API, one chunk to one SSE client
    "fold_us": 1e6 / 22_000,  # Postgres projection, one event of a chunk-heavy log
}
EVENTS_PER_PROMPT = 5  # PromptSubmitted, CompletionStarted, final, its chat.answers copy, + 1
PACE = {"base_s": 0.005, "events_per_s": 400.0, "max_s": 0.25}  # InferenceSettings defaults


def predicted_chunks(rate: float, tokens: int, token_rate: float) -> tuple[float, float]:
    """(chunks per prompt, the pace's interval): with `rate` times the generation time requests
    running in the one replica, each gets one chunk per interval; the first at once."""
    running = rate * tokens / token_rate
    interval = min(PACE["max_s"], max(PACE["base_s"], running / PACE["events_per_s"]))
    gap = 1 / token_rate
    if interval <= gap:
        return float(tokens), interval
    return 1 + (tokens - 1) * gap / interval, interval


def predicted_cpu_ms(chunks: float, readers: int) -> dict[str, float | None]:
    """Each service's CPU per prompt as the model has it (None: not modelled)."""
    u = UNIT_COSTS
    return {
        "command_api": u["accept_us"] / 1000,  # the model has no cost for the stream relay
        "query_api": chunks * (u["hub_read_us"] + readers * u["fanout_us"]) / 1000,
        "processors": (chunks + EVENTS_PER_PROMPT) * u["fold_us"] / 1000,
        "inference": None,  # the model sizes GPUs from published anchors, not this engine
        "gateway": None,
    }


def run_pipeline(rate: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    script = Path(__file__).with_name("pipeline.py")
    cmd = [sys.executable, str(script), "--rate", str(rate), "--duration", str(args.duration)]
    cmd += ["--tokens", str(args.tokens), "--token-rate", str(args.token_rate)]
    cmd += ["--levels", "--read-rounds", "10", "--no-compare", "--idle", "15", "--json", str(out)]
    subprocess.run(cmd, check=True)
    return dict(json.loads(out.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--token-rate", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates:
            result = run_pipeline(rate, args, Path(tmp) / f"pipeline-{rate}.json")
            chunks, interval = predicted_chunks(rate, args.tokens, args.token_rate)
            measured_chunks = result["open_loop"]["gateway"]["chunks_per_prompt"]
            # two readers per request: the client (through the relay) and the bench's own
            # direct reader of the same stream (bench/hops.py)
            # (from the measured chunk count: the per-event figures are checked apart from
            # the pace, which the chunk rows check)
            predicted = predicted_cpu_ms(measured_chunks, readers=2)
            rows.append(
                {
                    "rate": rate,
                    "pace_interval_ms": round(interval * 1000, 1),
                    "chunks_per_prompt": {
                        "predicted": round(chunks, 1),
                        "measured": round(measured_chunks, 1),
                    },
                    # measured: all of the service's CPU in the open loop per prompt; idle:
                    # the share of it its loops burn with no prompt at all (--idle)
                    "cpu_ms_per_prompt": {
                        name: {
                            "predicted": None if p is None else round(p, 2),
                            "measured": round(result["cpu_ms_per_prompt"][name], 2),
                            "idle": round(result["idle_cpu_ms_per_s"][name] / rate, 2),
                        }
                        for name, p in predicted.items()
                    },
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
