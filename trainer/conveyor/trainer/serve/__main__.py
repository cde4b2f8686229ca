"""`python -m conveyor.trainer.serve`, the same as `python -m conveyor.trainer serve`."""

import argparse
import sys

from conveyor.trainer.serve import add_arguments, run

parser = argparse.ArgumentParser(prog="conveyor.trainer.serve", description=__doc__)
add_arguments(parser)
sys.exit(run(parser.parse_args()))
