"""KServe's Python ModelServer serving the same model directory as Conveyor (run in .venv-bench-serve).

The model is loaded with Conveyor's own predictor so both servers run the identical torch module and
preprocessing; only the serving stack differs. gRPC is off (the load is HTTP) and per-request latency
logging is off, which only helps KServe.

    PYTHONPATH=trainer .venv-bench-serve/bin/python benchmarks/serving_peers/kserve_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from conveyor.trainer.predictor import load_predictor


class ConveyorModel(Model):
    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.predictor = None
        self.load()

    def load(self) -> bool:
        self.predictor = load_predictor(self.model_dir)
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        rows = payload.inputs[0].as_numpy()
        proba = self.predictor.predict_raw(rows)
        outputs = [
            InferOutput(name="probabilities", shape=list(proba.shape), datatype="FP32", data=proba),
            InferOutput(name="label", shape=[proba.shape[0]], datatype="INT64", data=proba.argmax(1)),
        ]
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or "")


if __name__ == "__main__":
    model_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(1)
    model = ConveyorModel("model", model_dir)
    server = ModelServer(http_port=port, workers=1, enable_grpc=False, enable_latency_logging=False)
    logging.getLogger("uvicorn.access").disabled = True
    server.start([model])
