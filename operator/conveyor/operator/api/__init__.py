"""The TrainingPipeline resource (`conveyor.dev/v1alpha1`): spec and status models, cross-field rules,
manifest loading and the CRD generated from the models. The models are the single source of truth:
`conveyor validate`, `conveyor run` and the API server (through the generated CRD) judge a manifest
with the same rules and the same messages."""

GROUP = "conveyor.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingPipeline"
PLURAL = "trainingpipelines"
SINGULAR = "trainingpipeline"
SHORT_NAMES = ("tp",)
CATEGORIES = ("conveyor", "ml")
# The most trials one pipeline runs (spec.tuning.trials) and so keeps (status.trials).
MAX_TRIALS = 500
