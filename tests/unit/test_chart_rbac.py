"""Every RBAC rule the chart grants (templates/rbac.yaml) is used, and everything the operator does is
granted: `USES` names, for each (API group, resource, verb), the code that needs it, and the tests
check that table against both sides.

- The code side is read from the source, not from the table: every Kubernetes API call in
  operator/conveyor/operator/kubernetes/*.py (a `request`/`get`/`list`/`apply`/`delete` on an `api`)
  must be cited, and every citation must still exist; kopf's watches (list + watch) come from the
  operator's own registry; the kinds server-side apply writes (patch, and create when the object is
  new) come from the builders, for a pipeline with every stage, serving autoscaling and a
  provisioned claim.
- The chart side is the rendered chart, cluster-wide and namespaced.
A call added without a rule, a rule whose code went away, or a rule nothing cites fails here. That the
granted rules suffice is also shown on the real control plane: tests/e2e runs the operator with the
chart ServiceAccount's token (tests/helpers/operator_bed.running_operator), so a missing rule is a 403.
cluster.py is not the operator: it reads with a person's kubeconfig for `conveyor status`/`logs`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from conveyor.commands.render import PLACEHOLDER_UID, pipeline_objects
from conveyor.operator.api.resource import parse
from conveyor.operator.kubernetes import builders
from conveyor.operator.kubernetes.executor import PATHS, Api
from conveyor.operator.kubernetes.operator import Controller, OperatorConfig, registry_for
from tests.helpers.manifests import reference_document
from tests.unit.test_chart import render

KUBERNETES = Path(builders.__file__).parent
NOT_THE_OPERATOR = {"cluster.py"}
API_METHODS = {"request", "get", "list", "apply", "delete"}

Site = tuple[str, str, str]  # module, enclosing function, the call as ast.unparse writes it
Rule = tuple[str, str, str]  # API group, resource, verb

STEP_GET = ("operator.py", "step", "self.api.get(path)")
LIST_PIPELINES = ("operator.py", "list_pipelines", "self.api.get(path)")
START = ("executor.py", "start", "self.api.apply(obj)")
START_SERVING = ("executor.py", "start_serving", "self.api.apply(obj)")
STOP_SERVING = ("executor.py", "stop_serving", "self.api.delete(kind, self.owner.namespace, name)")
CLAIM = ("executor.py", "ensure_storage", "self.api.apply(claim)")
LEASE_GETS = [
    ("leader.py", "attempt", "self.api.get(self.path)"),
    ("leader.py", "release", "self.api.get(self.path)"),
]
LEASE_PUTS = [
    ("leader.py", "attempt", "self.api.request('PUT', self.path, body)"),
    ("leader.py", "release", "self.api.request('PUT', self.path, released(lease))"),
]


def watch(group: str, plural: str) -> Site:
    return ("kopf", "on.event", f"{group}/{plural}")


USES: dict[Rule, list[Site]] = {
    ("conveyor.dev", "trainingpipelines", "get"): [STEP_GET],
    ("conveyor.dev", "trainingpipelines", "list"): [
        LIST_PIPELINES,
        watch("conveyor.dev", "trainingpipelines"),
    ],
    ("conveyor.dev", "trainingpipelines", "watch"): [watch("conveyor.dev", "trainingpipelines")],
    ("conveyor.dev", "trainingpipelines", "delete"): [
        (
            "executor.py",
            "delete_pipeline",
            "self.api.delete('TrainingPipeline', self.owner.namespace, self.owner.name)",
        )
    ],
    ("conveyor.dev", "trainingpipelines/status", "patch"): [
        (
            "executor.py",
            "patch_status",
            "self.api.request('PATCH', path, patch, content_type='application/json-patch+json')",
        )
    ],
    ("batch", "jobs", "list"): [
        ("executor.py", "observe", "self.api.list('Job', owner.namespace, selector)"),
        watch("batch", "jobs"),
    ],
    ("batch", "jobs", "watch"): [watch("batch", "jobs")],
    ("batch", "jobs", "create"): [START],
    ("batch", "jobs", "patch"): [START],
    ("batch", "jobs", "delete"): [
        ("executor.py", "stop", "self.api.delete('Job', self.owner.namespace, job)")
    ],
    ("", "pods", "get"): [("operator.py", "read", "api.get(PATHS['Pod'].format(ns=namespace) + f'/{name}')")],
    ("", "pods", "list"): [
        ("executor.py", "observe", "self.api.list('Pod', owner.namespace, selector)"),
        watch("", "pods"),
    ],
    ("", "pods", "watch"): [watch("", "pods")],
    ("", "services", "create"): [START, START_SERVING],
    ("", "services", "patch"): [START, START_SERVING],
    ("", "services", "delete"): [
        ("executor.py", "stop", "self.api.delete('Service', self.owner.namespace, job)"),
        STOP_SERVING,
    ],
    ("apps", "deployments", "get"): [("executor.py", "observe_serving", "self.api.get(path)")],
    ("apps", "deployments", "list"): [watch("apps", "deployments")],
    ("apps", "deployments", "watch"): [watch("apps", "deployments")],
    ("apps", "deployments", "create"): [START_SERVING],
    ("apps", "deployments", "patch"): [START_SERVING],
    ("apps", "deployments", "delete"): [STOP_SERVING],
    ("autoscaling", "horizontalpodautoscalers", "create"): [START_SERVING],
    ("autoscaling", "horizontalpodautoscalers", "patch"): [START_SERVING],
    ("autoscaling", "horizontalpodautoscalers", "delete"): [STOP_SERVING],
    ("", "persistentvolumeclaims", "get"): [
        (
            "executor.py",
            "ensure_storage",
            "self.api.get(PATHS['PersistentVolumeClaim'].format(ns=self.owner.namespace) + f'/{name}')",
        )
    ],
    ("", "persistentvolumeclaims", "create"): [CLAIM],
    ("", "persistentvolumeclaims", "patch"): [CLAIM],
    ("", "events", "create"): [
        (
            "executor.py",
            "emit",
            "self.api.request('POST', PATHS['Event'].format(ns=meta['namespace']), event)",
        )
    ],
    ("coordination.k8s.io", "leases", "create"): [
        ("leader.py", "attempt", "self.api.request('POST', LEASES.format(ns=self.namespace), body)")
    ],
    ("coordination.k8s.io", "leases", "get"): LEASE_GETS,
    ("coordination.k8s.io", "leases", "update"): LEASE_PUTS,
    ("authentication.k8s.io", "tokenreviews", "create"): [
        ("operator.py", "review", "api.request('POST', '/apis/authentication.k8s.io/v1/tokenreviews', body)")
    ],
    ("", "secrets", "get"): [("statusserver.py", "progress_ca", "api.get(path)")],
    ("", "secrets", "create"): [
        ("statusserver.py", "progress_ca", "api.request('POST', SECRETS.format(ns=namespace), secret)")
    ],
}

# What a call's method may mean: a GET reads one object or lists a collection; apply is a PATCH that
# creates a missing object.
VERBS = {
    "get": {"get", "list"},
    "list": {"list"},
    "apply": {"create", "patch"},
    "delete": {"delete"},
    "POST": {"create"},
    "PUT": {"update"},
    "PATCH": {"patch"},
}


def api_calls() -> set[Site]:
    """Every Kubernetes API call in the operator's modules, with the function it is in."""
    sites: set[Site] = set()
    for path in sorted(KUBERNETES.glob("*.py")):
        if path.name in NOT_THE_OPERATOR:
            continue

        def visit(node: ast.AST, function: str, module: str = path.name) -> None:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                function = node.name
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in API_METHODS
                and ast.unparse(node.func.value).split(".")[-1] == "api"
            ):
                sites.add((module, function, ast.unparse(node)))
            for child in ast.iter_child_nodes(node):
                visit(child, function)

        visit(ast.parse(path.read_text()), "")
    return sites


def kopf_watches() -> set[Site]:
    registry = registry_for(Controller(Api(None), OperatorConfig()))
    assert not registry._changing.get_all_handlers(), "change handlers patch kopf's state onto objects"
    return {
        watch(h.selector.group or "", h.selector.any_name or "")
        for h in registry._watching.get_all_handlers()
    }


def group_resource(api_path: str) -> tuple[str, str]:
    """("apps", "deployments") from /apis/apps/v1/namespaces/{ns}/deployments; core: ""."""
    parts = api_path.strip("/").split("/")
    return ("" if parts[0] == "api" else parts[1], parts[-1])


def granted(objects: list[dict[str, Any]]) -> set[Rule]:
    return {
        (group, resource, verb)
        for role in objects
        if role["kind"] in ("Role", "ClusterRole")
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_every_api_call_is_cited_and_every_citation_is_a_call() -> None:
    cited = {site for sites in USES.values() for site in sites}
    calls = api_calls() | kopf_watches()
    assert calls - cited == set(), "an API call with no rule in USES (and the chart)"
    assert cited - calls == set(), "USES cites code that is gone"


def test_each_citation_does_what_its_rule_says() -> None:
    """The verb fits the call's method, and a call that names its kind names the rule's resource."""
    kinds = {kind: group_resource(path) for kind, path in PATHS.items()}
    named = {
        "LEASES": ("coordination.k8s.io", "leases"),
        "SECRETS": ("", "secrets"),
        "tokenreviews": ("authentication.k8s.io", "tokenreviews"),
    }
    for (group, resource, verb), sites in USES.items():
        for module, _, call in sites:
            if module == "kopf":
                assert verb in ("list", "watch") and call == f"{group}/{resource}"
                continue
            method = re.match(r"(?:self\.)?api\.(\w+)\('?(\w*)", call)
            assert method is not None, call
            meaning = VERBS[method.group(2) if method.group(1) == "request" else method.group(1)]
            assert verb in meaning, (verb, call)
            for name, (g, r) in [*((f"'{k}'", v) for k, v in kinds.items()), *named.items()]:
                if name in call:
                    assert (g, r) == (group, resource.removesuffix("/status")), (group, resource, call)


def test_applied_kinds_are_the_builders_kinds() -> None:
    """Server-side apply writes what the builders make: for each kind, patch and create are granted
    and cited with an apply."""
    document = reference_document()
    del document["spec"]["storage"]  # the provisioned claim
    document["spec"]["serving"]["autoscaling"] = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "targetCpuUtilization": 70,
    }
    pipeline = parse(document)
    owner = builders.Owner(pipeline.name, "ml", PLACEHOLDER_UID, pipeline.spec)
    kinds = {o["kind"] for o in pipeline_objects(owner, builders.Settings(progress_url="https://p.svc:8081"))}
    assert kinds == {"PersistentVolumeClaim", "Job", "Service", "Deployment", "HorizontalPodAutoscaler"}
    applies = {site for site in api_calls() if ".apply(" in site[2]}
    for kind in kinds:
        group, resource = group_resource(PATHS[kind])
        for verb in ("create", "patch"):
            assert set(USES[(group, resource, verb)]) <= applies, (kind, verb)


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={ml,research}",)])
def test_the_chart_grants_exactly_what_is_used(sets: tuple[str, ...]) -> None:
    assert granted(render(*sets)) == set(USES)


def test_without_tls_or_leader_election_their_rules_go() -> None:
    rules = granted(render("progress.tls.enabled=false", "leaderElection.enabled=false"))
    assert rules == {r for r in USES if r[1] not in ("secrets", "leases")}
