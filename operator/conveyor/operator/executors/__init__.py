"""Executors carry out the engine's actions and observe what happened: local processes or Kubernetes."""
