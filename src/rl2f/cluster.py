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


def render(base: Path = Path("k8s")) -> list[dict[str, Any]]:
    kustomization = base / "kustomization.yaml"
    if not kustomization.exists():
        raise UserError(f"{kustomization}: not found")
    spec = yaml.safe_load(kustomization.read_text())
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


def apply(base: Path = Path("k8s"), wait_s: float = 600.0) -> list[DeploymentState]:
    from kubernetes.dynamic import DynamicClient

    objects = render(base)
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
