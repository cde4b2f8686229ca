"""LitServe with dynamic batching serving the same model directory (run in .venv-bench-serve).

Same predictor, same max batch size (32) and batch timeout (2 ms) as Conveyor's defaults; the
endpoint takes the same Open Inference Protocol v2 JSON body and answers in the same shape.

    PYTHONPATH=trainer .venv-bench-serve/bin/python benchmarks/serving_peers/litserve_server.py \
        MODEL_DIR PORT [fast-queue]
"""

from __future__ import annotations

import sys
from pathlib import Path

import litserve as ls
import numpy as np
import torch

from conveyor.trainer.predictor import load_predictor


class ConveyorAPI(ls.LitAPI):
    def __init__(self, model_dir: Path) -> None:
        super().__init__(max_batch_size=32, batch_timeout=0.002, api_path="/v2/models/model/infer")
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)
        self.predictor = load_predictor(self.model_dir)

    def decode_request(self, request: dict) -> np.ndarray:
        tensor = request["inputs"][0]
        return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])

    def batch(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        return np.concatenate(inputs), [len(x) for x in inputs]

    def predict(self, batch: tuple[np.ndarray, list[int]]) -> tuple[np.ndarray, list[int]]:
        rows, sizes = batch
        return self.predictor.predict_raw(rows), sizes

    def unbatch(self, output: tuple[np.ndarray, list[int]]) -> list[np.ndarray]:
        proba, sizes = output
        return np.split(proba, np.cumsum(sizes)[:-1])

    def encode_response(self, proba: np.ndarray) -> dict:
        return {
            "model_name": "model",
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": list(proba.shape),
                 "data": proba.ravel().tolist()},
                {"name": "label", "datatype": "INT64", "shape": [len(proba)],
                 "data": proba.argmax(1).tolist()},
            ],
        }


if __name__ == "__main__":
    model_dir, port = Path(sys.argv[1]), int(sys.argv[2])
    fast_queue = sys.argv[3:] == ["fast-queue"]  # ZeroMQ instead of multiprocessing queues
    server = ls.LitServer(
        ConveyorAPI(model_dir), accelerator="cpu", workers_per_device=1, timeout=30, fast_queue=fast_queue
    )
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
