"""The real control plane: the test bed itself and the operator against a real API server."""
