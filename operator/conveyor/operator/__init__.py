"""Conveyor's control plane: the TrainingPipeline resource, the pure engine that decides what runs next,
and the executors (Kubernetes, local processes) that carry those decisions out."""
