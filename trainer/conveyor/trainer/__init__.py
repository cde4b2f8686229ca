"""Conveyor's data plane: the code that runs inside every workload (prepare, train, evaluate, ensemble,
serve). It never talks to the Kubernetes API; it reads its config and writes artifacts and progress."""
