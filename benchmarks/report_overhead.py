"""What `conveyor.sdk.report()` called every step costs a user's training loop.

One process trains the same small MLP (64 inputs, `--hidden` wide, 10 classes, AdamW, batch 64, one
CPU thread: the smallest steps, where a per-step cost shows most) in two variants, interleaved round
by round and in alternating order so both see the same machine:

- plain:  the loop alone;
- report: the same loop calling `sdk.report(step, {"trainLoss": loss.detach()})` every step and
          `sdk.report(step, {"accuracy": .., "loss": ..})` at every evaluation, inside a pipeline
          environment (`CONVEYOR_OUT`, `CONVEYOR_CONFIG` with `training.maxSteps`), so reports on the
          step grid are really written to progress.jsonl.

Both variants evaluate on the same schedule (every `--eval-every` steps), so the difference is the SDK
alone. Time is this process's CPU time (`time.process_time`, one thread), not wall time: on a shared
machine a process waiting for a core would otherwise be charged for it. Rounds are short and paired,
because the machine's load (caches, memory bandwidth) still changes by the second: the
headline is the median over rounds of (report / plain steps per CPU second) in the same round, with the
quartiles; also each variant's median steps per CPU second, the cost of one held-back `report()`
call and of one written report, and the overhead those prices account for (calls made x price / the
plain loop's time), which the machine's noise does not move. Raw numbers:
benchmarks/out/report_overhead.json.

    .venv/bin/python benchmarks/report_overhead.py                 # ~1 minute on 2 shared cores
    .venv/bin/python benchmarks/report_overhead.py --rounds 10 --steps 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=250, help="training steps per variant per round")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=50)
    args = parser.parse_args()

    out_dir = Path(tempfile.mkdtemp(prefix="report-overhead-"))
    max_steps = args.rounds * args.steps
    os.environ.update(
        CONVEYOR_OUT=str(out_dir),
        CONVEYOR_CONFIG=json.dumps(
            {"task": {"objective": {"metric": "accuracy"}}, "training": {"maxSteps": max_steps}}
        ),
    )
    import torch
    import torch.nn.functional as F
    from torch import nn

    from conveyor import sdk

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.randn(4096, 64), torch.randint(0, 10, (4096,))
    val_x, val_y = x[:512], y[:512]
    model = nn.Sequential(nn.Linear(64, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reported_steps = 0

    def train(steps: int, report: bool) -> float:
        nonlocal reported_steps
        started = time.process_time()
        for index in range(steps):
            batch = (index * 64) % (4096 - 64)
            loss = F.cross_entropy(model(x[batch : batch + 64]), y[batch : batch + 64])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if report:
                reported_steps += 1
                sdk.report(reported_steps, {"trainLoss": loss.detach()})
            if (index + 1) % args.eval_every == 0:
                with torch.no_grad():
                    logits = model(val_x)
                metrics = {"accuracy": float((logits.argmax(1) == val_y).float().mean()),
                           "loss": float(F.cross_entropy(logits, val_y))}  # fmt: skip
                if report:
                    sdk.report(reported_steps, metrics)
        return steps / (time.process_time() - started)

    train(200, report=False)  # warm-up: allocator, kernels
    rates: dict[str, list[float]] = {"plain": [], "report": []}
    for round_number in range(args.rounds):
        order = ("plain", "report") if round_number % 2 == 0 else ("report", "plain")
        for variant in order:
            rates[variant].append(train(args.steps, report=variant == "report"))

    calls = 200_000
    started = time.process_time()
    for _ in range(calls):
        sdk.report(1, {"trainLoss": 0.5})  # held back: the common case
    per_call_ns = (time.process_time() - started) / calls * 1e9

    written = sum(1 for line in (out_dir / "progress.jsonl").read_text().splitlines() if line)
    reporter = sdk._reporter()
    writes, step = 500, reporter.last_written or 0
    started = time.process_time()
    for _ in range(writes):
        step += reporter.grid  # the next grid point: every call writes an event
        sdk.report(step, {"accuracy": 0.5, "loss": 0.7, "trainLoss": 0.6})
    per_write_us = (time.process_time() - started) / writes * 1e6

    plain, reported = statistics.median(rates["plain"]), statistics.median(rates["report"])
    # The same cost by accounting, free of the machine's noise: the calls the report variant made,
    # each at its measured price, over the plain variant's time for the same steps.
    calls_made = args.rounds * (args.steps + args.steps // args.eval_every)
    accounted = (calls_made * per_call_ns * 1e-9 + written * per_write_us * 1e-6) / (
        args.rounds * args.steps / plain
    )
    ratios = [r / p for r, p in zip(rates["report"], rates["plain"], strict=True)]
    low, ratio, high = statistics.quantiles(ratios, n=4)
    summary: dict[str, Any] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "args": vars(args),
        "steps_per_cpu_second": rates,
        "median_plain": round(plain, 1),
        "median_report": round(reported, 1),
        "paired_ratios": [round(r, 4) for r in ratios],
        "ratio_median": round(ratio, 4),
        "ratio_quartiles": [round(low, 4), round(high, 4)],
        "cost_percent": round(100 * (1 - ratio), 2),
        "held_report_call_ns": round(per_call_ns),
        "written_report_us": round(per_write_us, 1),
        "reports_written": written,
        "accounted_cost_percent": round(100 * accounted, 3),
        "load_average": os.getloadavg(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report_overhead.json").write_text(json.dumps(summary, indent=1))
    print(
        f"steps per CPU second: plain {plain:.1f}, report {reported:.1f} "
        f"(medians, {args.rounds} x {args.steps} steps)"
    )
    print(
        f"paired ratio report/plain: median {ratio:.4f} (quartiles {low:.4f}-{high:.4f}); "
        f"cost {summary['cost_percent']}%"
    )
    print(
        f"one held-back report() call: {per_call_ns:.0f} ns; one written report: {per_write_us:.0f} us "
        f"({written} written); accounted cost {100 * accounted:.3f}%"
    )


if __name__ == "__main__":
    main()
