"""A small dynamic provisioner: PVCs of the ``conveyor-local`` StorageClass (the default class) get a
hostPath PersistentVolume in ``<state_dir>/volumes/pvc-<uid>``, pre-bound to the claim; the
controller-manager's binder completes the binding. Released volumes are deleted with their data."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("conveyor.devcluster.provisioner")

STORAGE_CLASS = "conveyor-local"
PROVISIONER = "conveyor.dev/local-path"


class Provisioner:
    def __init__(self, api: client.ApiClient, root: Path) -> None:
        self.core: Any = client.CoreV1Api(api)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def sync(self) -> None:
        for pvc in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if pvc.spec.volume_name or pvc.metadata.deletion_timestamp:
                continue
            if pvc.spec.storage_class_name != STORAGE_CLASS:
                continue
            self._provision(pvc)
        for pv in self.core.list_persistent_volume().items:
            ann = pv.metadata.annotations or {}
            if ann.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
                continue
            if (
                pv.status.phase in ("Released", "Failed")
                and pv.spec.persistent_volume_reclaim_policy == "Delete"
            ):
                with contextlib.suppress(ApiException):
                    self.core.delete_persistent_volume(pv.metadata.name)
                shutil.rmtree(pv.spec.host_path.path, ignore_errors=True)
                log.info("deleted %s", pv.metadata.name)

    def _provision(self, pvc: Any) -> None:
        name = f"pvc-{pvc.metadata.uid}"
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        size = (pvc.spec.resources.requests or {}).get("storage", "1Gi")
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": pvc.spec.access_modes or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": STORAGE_CLASS,
                "volumeMode": pvc.spec.volume_mode or "Filesystem",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": pvc.metadata.namespace,
                    "name": pvc.metadata.name,
                    "uid": pvc.metadata.uid,
                },
            },
        }
        try:
            self.core.create_persistent_volume(pv)
            log.info("provisioned %s for %s/%s", name, pvc.metadata.namespace, pvc.metadata.name)
        except ApiException as e:
            if e.status != 409:
                raise
