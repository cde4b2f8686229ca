"""`conveyor render -f FILE`: the objects the operator would create for a pipeline, as YAML, without a
cluster: for review, GitOps diffs and policy scanners (scripts/checkov runs checkov over them).

What is printed is the artifacts claim the operator provisions (when the spec names no `storage.uri`),
then the first attempt of every kind of workload the pipeline runs, built exactly as the operator
builds them (the engine's `workload_for`, then the Kubernetes builders): prepare, the first trial with
the parameters the study asks first, train, evaluate-model, ensemble (the first `topK` trials standing
in for the best ones) and evaluate-ensemble, then serving (Deployment, Service, and the HPA with
`serving.autoscaling`). Values only known at run time are placeholders: the final training is shown
with the spec's own parameters (the operator uses the best trial's) and the owner reference's uid is
zeros, and with an https `--progress-url` the progress CA certificate pods verify the endpoint with
(which the operator creates at its first start) is `PLACEHOLDER_CA`. The defaults of `--image`,
`--image-pull-policy` and `--progress-url` are what the Helm chart's operator uses when installed as
`conveyor` in `conveyor-system`.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.operator.kubernetes.builders import Owner, Settings

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
PLACEHOLDER_CA = "<the progress CA certificate (PEM) in the Secret conveyor-system/conveyor-progress-tls>"
CHART_PROGRESS_URL = "https://conveyor-progress.conveyor-system.svc:8081"
CHART_PULL_POLICY = "IfNotPresent"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "render",
        help="print the objects the operator would create for a pipeline (YAML)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-f", "--filename", required=True, help="manifest (YAML); - reads stdin")
    parser.add_argument(
        "-n", "--namespace", default=None, help="default: the manifest's namespace, else 'default'"
    )
    parser.add_argument("--image", default=None, help="trainer image (default: the chart's, this version)")
    parser.add_argument("--image-pull-policy", default=CHART_PULL_POLICY)
    parser.add_argument(
        "--progress-url", default=CHART_PROGRESS_URL, help="the operator's progress endpoint; '' for none"
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import yaml

    from conveyor.operator.api.resource import ManifestError, load_manifest
    from conveyor.operator.kubernetes import builders

    try:
        pipelines = load_manifest(sys.stdin.read() if args.filename == "-" else args.filename)
    except FileNotFoundError:
        print(f"{args.filename}: no such file", file=sys.stderr)
        return 1
    except ManifestError as error:
        for field, message in error.problems:
            where = f"{args.filename}: {field}" if field else args.filename
            print(f"{where}: {message}", file=sys.stderr)
        return 1
    repository = builders.DEFAULT_IMAGE.rsplit(":", 1)[0]
    settings = builders.Settings(
        image=args.image or f"{repository}:{version('conveyor')}",
        image_pull_policy=args.image_pull_policy or None,
        progress_url=args.progress_url or None,
        progress_ca=PLACEHOLDER_CA if args.progress_url.startswith("https://") else None,
    )
    objects = []
    for pipeline in pipelines:
        namespace = args.namespace or pipeline.metadata.namespace or "default"
        owner = builders.Owner(pipeline.name, namespace, PLACEHOLDER_UID, pipeline.spec)
        objects += pipeline_objects(owner, settings)
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0


def pipeline_objects(owner: Owner, settings: Settings) -> list[dict[str, Any]]:
    """Every object of the first attempt of each workload `owner`'s spec runs, then serving's."""
    from conveyor.operator.api.status import EnsembleStatus, PipelineStatus, TrialStatus
    from conveyor.operator.engine import promotion, tuning
    from conveyor.operator.engine.tuning import max_epochs
    from conveyor.operator.engine.workload_kinds import trial_name, workload_for
    from conveyor.operator.kubernetes import builders

    spec = owner.spec
    status = PipelineStatus()
    names = ["prepare"]
    if spec.tuning is not None:
        study = tuning.Study(spec.tuning, [], spec.task.maximize, max_epochs(spec))
        params, _, _ = study.ask(0)
        status.trials = [TrialStatus(name=trial_name(0), number=0, params=params, state="Running")]
        names.append(trial_name(0))
    names += ["train", "evaluate-model"]
    if spec.ensemble is not None:
        members = [trial_name(n) for n in range(spec.ensemble.top_k)]
        status.ensemble = EnsembleStatus(members=members, method=spec.ensemble.method)
        names += ["ensemble", "evaluate-ensemble"]
    claim = builders.artifacts_claim(owner)  # provisioned when the spec names no storage.uri
    objects = [claim] if claim is not None else []
    for name in names:
        objects += builders.workload_objects(owner, settings, workload_for(spec, status, name, 0))
    if spec.serving is not None:
        model = promotion.SERVED_ARTIFACT[promotion.candidate(spec)]
        objects += builders.serving_objects(owner, settings, model, spec.serving)
    return objects
