"""`conveyor apply -f pipeline.yaml [-n NS]`: put a pipeline with its code on the cluster.

`kubectl apply` cannot ship a directory, and the operator cannot read one on the user's machine (it
refuses `spec.code.path`). This command does what `conveyor run` does with the directory, for a cluster:
it packs `spec.code.path` (relative to the manifest) into the ConfigMap `<name>-code` (a tar.gz in
`binaryData`), rewrites the pipeline to name that ConfigMap (`spec.code.configMap`, no path) and applies
both, the ConfigMap first so no pod waits for it, then owned by the pipeline (an ownerReference) so
deleting the pipeline deletes its code. Every pod of the pipeline mounts it read-only; the trainer
unpacks it and puts it on the path. A manifest without `spec.code.path` is applied as it is.

A ConfigMap holds at most 1 MiB, so a larger directory is refused with what to do instead: bake the code
into an image (`spec.code.image`) or install it there as a package. The archive is deterministic (sorted
names, no timestamps or owners, no `__pycache__`, `.git` or compiled files): the same directory gives the
same ConfigMap, so applying an unchanged pipeline again changes nothing.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path
from typing import Any

# The API server refuses a ConfigMap whose data exceed 1 MiB; leave room for metadata.
MAX_ARCHIVE_BYTES = 1_000_000
SKIPPED_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
SKIPPED_SUFFIXES = (".pyc", ".pyo")
FIELD_MANAGER = "conveyor-cli"
DIGEST_ANNOTATION = "conveyor.dev/code-sha256"


class ApplyError(Exception):
    """What stops the apply; the message names the field or file and the fix."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="apply a pipeline to the cluster, its spec.code.path packed into a ConfigMap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-f", "--filename", required=True, help="TrainingPipeline manifest (YAML)")
    parser.add_argument("-n", "--namespace", help="default: the manifest's, else the kubeconfig context's")
    parser.add_argument("--kubeconfig", help="default $KUBECONFIG or ~/.kube/config")
    parser.set_defaults(handler=handle)


def code_config_map_name(pipeline: str) -> str:
    return f"{pipeline}-code"


def _files(directory: Path) -> list[Path]:
    found = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part in SKIPPED_DIRS for part in relative.parts) or path.suffix in SKIPPED_SUFFIXES:
            continue
        if path.is_file() and not path.is_symlink():
            found.append(path)
    return found


def pack(directory: Path) -> bytes:
    """`directory` as a deterministic tar.gz; ApplyError when it is larger than a ConfigMap holds."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path in _files(directory):
            info = tarfile.TarInfo(path.relative_to(directory).as_posix())
            info.size = path.stat().st_size
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            with path.open("rb") as handle:
                archive.addfile(info, handle)
    packed = buffer.getvalue()
    if len(packed) > MAX_ARCHIVE_BYTES:
        raise ApplyError(
            f"spec.code.path: {directory} packs to {len(packed) / 2**20:.1f} MiB, more than a ConfigMap "
            f"holds (~{MAX_ARCHIVE_BYTES / 2**20:.2f} MiB compressed); build an image with your code and set "
            "spec.code.image (or install your code there as a package), or leave data and weights out of "
            "the code directory"
        )
    return packed


def code_config_map(name: str, namespace: str, archive: bytes) -> dict[str, Any]:
    """The ConfigMap holding a pipeline's packed code (its owner is added once the pipeline exists)."""
    from conveyor.operator.kubernetes.builders import CODE_ARCHIVE_KEY, label_value

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": code_config_map_name(name),
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "conveyor",
                "app.kubernetes.io/component": "code",
                "conveyor.dev/pipeline": label_value(name),
            },
            "annotations": {DIGEST_ANNOTATION: hashlib.sha256(archive).hexdigest()},
        },
        "binaryData": {CODE_ARCHIVE_KEY: base64.b64encode(archive).decode()},
    }


def with_packed_code(document: dict[str, Any], manifest_dir: Path) -> tuple[dict[str, Any], bytes | None]:
    """The manifest `document` as applied (spec.code.path replaced by code.configMap) and the archive
    of its code (None without spec.code.path)."""
    document = copy.deepcopy(document)
    code = (document.get("spec") or {}).get("code") or {}
    if "path" not in code:
        return document, None
    directory = (manifest_dir / str(code["path"])).resolve()
    if not directory.is_dir():
        raise ApplyError(
            f"spec.code.path: {directory} is not a directory; give the directory of your code, relative "
            "to the manifest"
        )
    archive = pack(directory)
    code.pop("path")
    code["configMap"] = code_config_map_name(document["metadata"]["name"])
    document["spec"]["code"] = code
    return document, archive


def _server_side_apply(api: Any, path: str, body: dict[str, Any]) -> Any:
    query = {"fieldManager": FIELD_MANAGER, "force": "true"}
    return api.request("PATCH", path, body, query, "application/apply-patch+yaml")


def apply_pipeline(api: Any, namespace: str, document: dict[str, Any], manifest_dir: Path) -> list[str]:
    """Apply one pipeline (and its packed code); returns what was applied, kubectl style. The ConfigMap
    goes first, owned by the pipeline when it already exists (so applying again changes nothing), and
    is given its owner right after the pipeline is created."""
    from conveyor.operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION
    from conveyor.operator.kubernetes.executor import ApiError

    applied, archive = with_packed_code(document, manifest_dir)
    name = applied["metadata"]["name"]
    applied["metadata"]["namespace"] = namespace
    pipeline_path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    config_map_path = f"/api/v1/namespaces/{namespace}/configmaps/{code_config_map_name(name)}"

    def apply_code(uid: str | None) -> None:
        assert archive is not None
        config_map = code_config_map(name, namespace, archive)
        if uid is not None:
            owner = {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid}
            config_map["metadata"]["ownerReferences"] = [{**owner, "blockOwnerDeletion": False}]
        _server_side_apply(api, config_map_path, config_map)

    done = []
    if archive is not None:
        try:
            existing: str | None = api.get(pipeline_path)["metadata"]["uid"]
        except ApiError as error:
            if error.status != 404:
                raise
            existing = None
        apply_code(existing)
        done.append(f"configmap/{code_config_map_name(name)} applied ({len(archive) / 1024:.1f} KiB packed)")
        uid = _server_side_apply(api, pipeline_path, applied)["metadata"]["uid"]
        if uid != existing:
            apply_code(uid)
    else:
        _server_side_apply(api, pipeline_path, applied)
    done.append(f"trainingpipeline.{GROUP}/{name} applied")
    return done


def handle(args: argparse.Namespace) -> int:
    import yaml

    from conveyor.operator.api import rules
    from conveyor.operator.api.resource import ManifestError, parse
    from conveyor.operator.kubernetes.cluster import ClusterError, connect
    from conveyor.operator.kubernetes.executor import ApiError

    path = Path(args.filename)
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as error:
        print(f"cannot read {path}: {error}", file=sys.stderr)
        return 2
    try:
        prepared = []
        for document in documents:
            pipeline = parse(document, source=str(path))
            applied, _ = with_packed_code(document, path.resolve().parent)
            problems = rules.cluster_problems(parse(applied, source=str(path)).spec)
            if problems:
                raise ManifestError(problems, str(path))
            prepared.append((pipeline.metadata.namespace, document))
    except ManifestError as error:
        print(str(error), file=sys.stderr)
        return 2
    except ApplyError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 2
    try:
        api, default = connect(args.kubeconfig, None)
        for namespace, document in prepared:
            target = args.namespace or namespace or default
            for line in apply_pipeline(api, target, document, path.resolve().parent):
                print(line)
    except ClusterError as error:
        print(str(error), file=sys.stderr)
        return 1
    except ApiError as error:
        print(f"the API server refused it: {error.reason}", file=sys.stderr)
        return 1
    return 0
