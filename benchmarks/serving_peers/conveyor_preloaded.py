"""The process ablation for `conveyor-exported`: Conveyor's server on the rebuilt model (`conveyor`),
in a process that first loaded the same network's exported program and keeps it.

`torch.export.load` imports ~1,300 modules that `import torch` does not (sympy, dynamo, the export
serialiser) and leaves their objects on the heap. Serving the rebuilt model in such a process separates
what the exported server pays for being that process from what it pays for calling the program.

    .venv/bin/python benchmarks/serving_peers/conveyor_preloaded.py MODEL_PT2 serve --model MODEL_DIR ...
"""

from __future__ import annotations

import runpy
import sys

import torch

program = torch.export.load(sys.argv[1])  # kept: the exported server holds its program too
sys.argv = ["conveyor.trainer", *sys.argv[2:]]
runpy.run_module("conveyor.trainer", run_name="__main__", alter_sys=True)
