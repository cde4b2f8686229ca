"""`python -m conveyor.trainer serve`: a model directory behind the Open Inference Protocol v2.

    python -m conveyor.trainer serve --model runs/demo/model --port 8080 \
        --max-batch-size 32 --max-latency-ms 2 --quantization int8

Layers, bottom up: `protocol` (OIP v2 payloads, pure), `batching` (dynamic batching on the event
loop, the model on one worker thread), `telemetry` (Prometheus), `http` (a minimal HTTP/1.1 server on
httptools), `server` (routes and lifecycle). This module only parses arguments; torch is imported
when the server starts, so `--help` stays instant.

Outputs for classification are `probabilities` (FP32 [n, classes]), `label` (INT64 [n], the class
index) and `class` (BYTES [n], the class name); for regression `prediction` (FP32 [n]).
SIGTERM or SIGINT stops accepting connections, answers what is in flight, then exits 0.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
from pathlib import Path
from typing import get_args

from conveyor.trainer.config import Quantization, ServingSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ServingSpec()  # the manifest's `spec.serving` defaults are the command line's
    parser.add_argument("--model", required=True, type=Path, help="model or ensemble directory")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument(
        "--port", type=int, default=defaults.port, help="0 picks a free port (printed on stdout)"
    )
    parser.add_argument("--name", default=None, help="model name in URLs (default: the model card's name)")
    parser.add_argument(
        "--max-batch-size", type=int, default=defaults.max_batch_size, help="dynamic batching: largest batch"
    )
    parser.add_argument(
        "--max-latency-ms", type=float, default=defaults.max_latency_ms, help="dynamic batching: longest wait"
    )
    parser.add_argument(
        "--quantization",
        choices=get_args(Quantization),
        default=defaults.quantization,
        help="int8: dynamic, CPU",
    )
    parser.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument(
        "--inputs", choices=("raw", "normalized"), default="raw",
        help="raw: apply the dataset's normalisation to inputs (default); normalized: use them as sent",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")


def run(args: argparse.Namespace) -> int:
    import asyncio

    import torch

    from conveyor.trainer import artifacts
    from conveyor.trainer.predictor import load_predictor
    from conveyor.trainer.serve.server import InferenceServer, ServeOptions

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    card = artifacts.read_card(args.model)
    predictor = load_predictor(args.model, quantization=args.quantization, device=args.device)
    options = ServeOptions(
        name=args.name or card.name,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_latency_ms=args.max_latency_ms,
        max_body_bytes=args.max_body_bytes,
        raw_inputs=args.inputs == "raw",
    )
    server = InferenceServer(predictor, options)
    server.warm_up()
    # torch and friends leave ~200k long-lived objects; a full collection walking them stalls the
    # loop for 100+ ms (a p99 spike). Freezing them keeps collections to per-request garbage.
    gc.collect()
    gc.freeze()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(server.serve())
    return 0
