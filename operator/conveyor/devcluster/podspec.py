"""Pure helpers for the local kubelet: environment (with the downward API), $(VAR) expansion and
hosts-file entries. Pods are plain dicts in API (camelCase) form."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_FIELD_INDEX = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: defined variables are replaced, $$ escapes, the rest is kept."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(sub, value)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API ``fieldRef.fieldPath``."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    m = _FIELD_INDEX.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(path.split(".")[1]) or {}).items()))
    if path not in simple:
        raise ValueError(f"unsupported fieldRef {path!r}")
    return "" if simple[path] is None else str(simple[path])


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """A ``resourceFieldRef`` value; limits fall back to requests (divisors are not applied)."""
    kind, _, name = str(ref["resource"]).partition(".")
    res = container.get("resources") or {}
    value = (res.get(kind) or {}).get(name) or (res.get("requests") or {}).get(name)
    return str(value if value is not None else 0)


Lookup = Callable[[str, str, str], dict[str, str] | None]  # (kind, namespace, name) -> data


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    base: Mapping[str, str],
    lookup: Lookup,
) -> dict[str, str]:
    """The container's environment: ``base``, then envFrom, then env (each may use earlier values)."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind in ("configMapRef", "secretRef"):
            ref = source.get(kind)
            if ref:
                data = lookup(kind, ns, ref["name"])
                if data is None and not ref.get("optional"):
                    raise ValueError(f"{kind} {ns}/{ref['name']} not found")
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for var in container.get("env") or []:
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
        elif "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"])
        else:
            kind = "configMapRef" if "configMapKeyRef" in source else "secretRef"
            ref = source.get("configMapKeyRef") or source.get("secretKeyRef") or {}
            data = lookup(kind, ns, ref["name"]) or {}
            if ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not ref.get("optional"):
                raise ValueError(f"{kind} {ns}/{ref['name']} has no key {ref['key']!r}")
    return env


def hostname(pod: Mapping[str, Any]) -> str:
    return str(pod["spec"].get("hostname") or pod["metadata"]["name"])[:63]


def dns_names(pod: Mapping[str, Any]) -> list[str]:
    """Names a pod answers to: its hostname and, with a subdomain, the headless-Service forms."""
    host, sub = hostname(pod), pod["spec"].get("subdomain")
    ns = pod["metadata"]["namespace"]
    if not sub:
        return [host]
    base = f"{host}.{sub}"
    return [f"{base}.{ns}.svc.cluster.local", f"{base}.{ns}.svc", f"{base}.{ns}", base, host]
