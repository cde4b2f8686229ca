"""End to end: `conveyor run` and the operator, on this machine and on the real control plane."""
