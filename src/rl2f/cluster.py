"""``rl2f cluster apply | status``: put the k8s/ base on a cluster and report its endpoints.

Rendering covers the kustomize features the base uses (resources, namespace, labels, a
secretGenerator over env files) so no kubectl binary is needed; a test checks the result against
``kubectl kustomize`` where it is installed. Objects are applied server-side with the kubernetes
client's dynamic API, which is idempotent: rerunning ``apply`` updates what changed and leaves
the rest.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rl2f.errors import UserError

log = logging.getLogger(__name__)

FIELD_MANAGER = "rl2f"
WATCHED = ("rl2f-mlflow", "rl2f-teacher")  # deployments `apply` waits for
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}


MODEL_CACHE_CLAIM = "rl2f-model-cache"
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")
# A Kubernetes quantity as a storage request is written (200Gi, 1Ti, 500G); a storage class name
# is a DNS subdomain.
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PATCH_KEYS = ("patches", "patchesStrategicMerge", "patchesJson6902", "replacements")


@dataclass(frozen=True)
class CacheVolume:
    """The model-cache claim's settings, for clusters whose default storage does not suit it
    (``rl2f cluster apply --cache-storage-class nfs-client --cache-access-mode ReadWriteMany``).
    None keeps what k8s/pvc.yaml says (the default class, 200Gi, ReadWriteOnce)."""

    storage_class: str | None = None
    size: str | None = None
    access_mode: str | None = None

    def __post_init__(self) -> None:
        if self.storage_class is not None and not _fits(_DNS_SUBDOMAIN, self.storage_class):
            raise UserError(f"--cache-storage-class: {self.storage_class!r} is not a class name")
        if self.size is not None and not _fits(_QUANTITY, self.size):
            raise UserError(f"--cache-size: {self.size!r} is not a size such as 200Gi")
        if self.access_mode is not None and self.access_mode not in ACCESS_MODES:
            raise UserError(
                f"--cache-access-mode: {self.access_mode!r} is not one of {ACCESS_MODES}"
            )

    def apply_to(self, claim: dict[str, Any]) -> None:
        spec = claim["spec"]
        if self.storage_class is not None:
            spec["storageClassName"] = self.storage_class
        if self.size is not None:
            spec["resources"]["requests"]["storage"] = self.size
        if self.access_mode is not None:
            spec["accessModes"] = [self.access_mode]


def _fits(pattern: re.Pattern[str], value: str) -> bool:
    return len(value) <= 253 and pattern.fullmatch(value) is not None


def render(base: Path = Path("k8s"), cache: CacheVolume | None = None) -> list[dict[str, Any]]:
    kustomization = base / "kustomization.yaml"
    if not kustomization.exists():
        raise UserError(f"{kustomization}: not found")
    spec = yaml.safe_load(kustomization.read_text())
    if patching := [key for key in _PATCH_KEYS if key in spec]:
        # Applying them half-way would be worse than not at all: refuse, and say what works.
        raise UserError(
            f"{kustomization}: {', '.join(patching)} not supported by rl2f cluster apply; use "
            "kubectl apply -k, or the --cache-* options for the model-cache claim"
        )
    namespace = spec.get("namespace")
    labels: dict[str, str] = {}
    for entry in spec.get("labels", []):
        labels |= entry.get("pairs", {})
    objects = []
    for resource in spec.get("resources", []):
        for obj in yaml.safe_load_all((base / resource).read_text()):
            if not obj:
                continue
            metadata = obj.setdefault("metadata", {})
            if namespace and obj["kind"] not in CLUSTER_SCOPED:
                metadata["namespace"] = namespace
            if labels:
                metadata["labels"] = {**metadata.get("labels", {}), **labels}
            for subject in obj.get("subjects", []):
                subject.setdefault("namespace", namespace)
            if cache and (obj["kind"], metadata["name"]) == (
                "PersistentVolumeClaim",
                MODEL_CACHE_CLAIM,
            ):
                cache.apply_to(obj)
            objects.append(obj)
    for generator in spec.get("secretGenerator", []):
        secret = _generated_secret(base, generator, spec.get("generatorOptions", {}))
        secret["metadata"]["namespace"] = namespace
        if labels:
            secret["metadata"]["labels"] = dict(labels)
        objects.append(secret)
    return objects


def _generated_secret(base: Path, generator: dict, options: dict) -> dict[str, Any]:
    """A kustomize ``secretGenerator`` entry over env files, as ``kubectl kustomize`` renders it.
    The env files hold the real values and are git-ignored; a missing one is a clear error."""
    if not options.get("disableNameSuffixHash"):
        raise UserError("k8s/kustomization.yaml: secretGenerator needs disableNameSuffixHash")
    data: dict[str, str] = {}
    for name in generator.get("envs", []):
        path = base / name
        if not path.exists():
            raise UserError(
                f"{path}: not found (copy {path.name}.example next to it and fill it in)"
            )
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise UserError(f"{path}:{number}: expected KEY=VALUE")
            data[key] = base64.b64encode(value.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": generator["name"]},
        "type": generator.get("type", "Opaque"),
        "data": data,
    }


def _clients():  # noqa: ANN202
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config()
    except (ConfigException, FileNotFoundError, TypeError):
        try:
            config.load_incluster_config()
        except ConfigException:
            raise UserError(
                "no cluster configured: set KUBECONFIG or run inside a cluster"
            ) from None
    api = client.ApiClient()
    try:
        client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as exc:  # urllib3 connection errors, 401/403
        host = api.configuration.host
        raise UserError(f"cluster at {host} is not reachable: {type(exc).__name__}") from None
    return api


@dataclass(frozen=True)
class DeploymentState:
    name: str
    ready: int
    wanted: int
    endpoint: str | None

    @property
    def is_ready(self) -> bool:
        return self.wanted > 0 and self.ready >= self.wanted


def apply(
    base: Path = Path("k8s"), wait_s: float = 600.0, cache: CacheVolume | None = None
) -> list[DeploymentState]:
    from kubernetes.dynamic import DynamicClient

    objects = render(base, cache)
    dynamic = DynamicClient(_clients())
    for obj in objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        dynamic.server_side_apply(
            resource,
            body=obj,
            name=obj["metadata"]["name"],
            namespace=obj["metadata"].get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        log.info("applied %s/%s", obj["kind"], obj["metadata"]["name"])
    namespace = next(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace")
    deadline = time.monotonic() + wait_s
    while True:
        states = status(namespace)
        if all(s.is_ready for s in states if s.name in WATCHED) or time.monotonic() > deadline:
            return states
        time.sleep(5)


def status(namespace: str = "rl2f") -> list[DeploymentState]:
    from kubernetes import client

    api = _clients()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    services = {s.metadata.name: s for s in core.list_namespaced_service(namespace).items}
    states = []
    for deployment in apps.list_namespaced_deployment(namespace).items:
        name = deployment.metadata.name
        service = services.get(name)
        endpoint = None
        if service and service.spec.ports:
            endpoint = f"http://{name}.{namespace}.svc.cluster.local:{service.spec.ports[0].port}"
        states.append(
            DeploymentState(
                name=name,
                ready=deployment.status.ready_replicas or 0,
                wanted=deployment.spec.replicas or 0,
                endpoint=endpoint,
            )
        )
    return states


def format_states(states: list[DeploymentState]) -> str:
    lines = [f"{'deployment':<16} {'ready':<7} endpoint"]
    for s in states:
        lines.append(f"{s.name:<16} {s.ready}/{s.wanted:<5} {s.endpoint or '-'}")
    return "\n".join(lines)
