"""A real Kubernetes control plane on loopback, for tests and for trying Conveyor without a cluster.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built by
``scripts/build-control-plane``) run as local processes; KWOK simulates GPU nodes; a small Python
agent runs one *local node* whose pods really execute as local processes, and provisions
PersistentVolumes. See ``Cluster`` and the README section "Test bed".
"""

from conveyor.devcluster.cluster import Cluster, ClusterConfig, default_bin_dir

__all__ = ["Cluster", "ClusterConfig", "default_bin_dir"]
