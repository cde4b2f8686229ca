"""The Kubernetes executor: pure manifest builders (`builders`), the thin apply/observe layer
(`executor`), the kopf operator (`operator`), the progress endpoint (`statusserver`) and metrics."""
