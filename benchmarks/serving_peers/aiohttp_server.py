"""The HTTP-stack ablation: Conveyor's protocol, batcher and model behind aiohttp's web framework.

Everything but the HTTP layer is Conveyor's (decode, dynamic batching, encode, same predictor), so
comparing it with `conveyor` isolates what the hand-written httptools server buys over aiohttp.

    .venv/bin/python benchmarks/serving_peers/aiohttp_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch
from aiohttp import web

from conveyor.trainer.predictor import load_predictor
from conveyor.trainer.serve import protocol
from conveyor.trainer.serve.batching import Batcher


def main() -> None:
    model_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    predictor = load_predictor(model_dir)
    signature = protocol.Signature(
        "model", "1", predictor.task, predictor.feature_shape, tuple(predictor.classes)
    )
    batcher = Batcher(predictor.predict_raw, 32, 0.002)

    async def infer(request: web.Request) -> web.Response:
        try:
            decoded = protocol.decode_request(await request.read(), None, signature)
        except protocol.RequestError as error:
            return web.Response(status=error.status, body=protocol.error_body(error.message))
        output = await batcher.submit(decoded.rows)
        body, _ = protocol.encode_response(decoded, signature, output)
        return web.Response(body=body, content_type="application/json")

    gc.collect()
    gc.freeze()  # as Conveyor's server does, so the ablation differs in the HTTP layer only
    app = web.Application()
    app.router.add_post("/v2/models/model/infer", infer)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
