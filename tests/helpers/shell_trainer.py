"""A stand-in for `conveyor.trainer` in warm workers: the fork server's child runs this module, which
becomes the shell script named by `CONVEYOR_TEST_TRAINER` (see `processes.fake_python`), with the
trainer's arguments. The cold path's counterpart is `fake_python` itself, so one script serves both."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    script = os.environ["CONVEYOR_TEST_TRAINER"]
    os.execv(script, [script, "-m", "conveyor.trainer", *sys.argv[1:]])
