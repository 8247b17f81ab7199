"""Cluster placement of each step: GPUs, CPU and memory, node selector, tolerations, the model
cache volume (model-loading steps only), the pod's non-root security context and the secrets that
become environment variables. One helper applies it all, so the DAG reads as the method, not as
Kubernetes plumbing."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kfp import kubernetes

# Compile-time setting (`RL2F_MODEL_CACHE_PVC=... rl2f pipeline compile`): the claim that the
# steps which load models mount, for the Hugging Face cache and for their resumable workspaces.
# Its size, access mode and storage class are the claim's own (k8s/pvc.yaml, docs/cluster.md).
# Empty: no volume at all; models are downloaded into each pod and retries start over.
MODEL_CACHE_PVC = os.environ.get("RL2F_MODEL_CACHE_PVC", "rl2f-model-cache")
CACHE_MOUNT = "/cache"
HF_HOME = f"{CACHE_MOUNT}/huggingface"  # the teacher server mounts this subPath as its cache
WORK_ROOT = f"{CACHE_MOUNT}/rl2f-work"  # rl2f.pipeline_io.WORK_ROOT_ENV
# The image's user (Dockerfile): pipeline pods run as it, never as root.
RUN_AS_USER = 1000
SECRETS = {
    # secret name -> {secret key: env var}
    "rl2f-s3": {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_S3": "AWS_ENDPOINT_URL_S3",
        "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",
    },
    "rl2f-mlflow": {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"},
    "rl2f-hf": {"HF_TOKEN": "HF_TOKEN"},
}
# The Kubeflow run id, read by each step from its own pod: the KFP API server labels every pod of
# a run with `pipeline/runid`. Stages find the run's MLflow parent by it (rl2f.tracking), so no
# per-run value is among any task's inputs and the cache can hit across runs.
RUN_ID_ENV = "KFP_RUN_ID"
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"


@dataclass(frozen=True)
class Placement:
    cpu: str = "2"
    memory: str = "8G"
    gpus: int = 0
    gpu_type: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[tuple[str, str, str], ...] = ()  # (key, operator, effect)
    retries: int = 2
    loads_models: bool = False  # mounts the model cache (and keeps a resumable workspace there)


CPU_STEP = Placement()
GPU_STEP = Placement(
    cpu="8",
    memory="64G",
    gpus=1,
    tolerations=(("nvidia.com/gpu", "Exists", "NoSchedule"),),
    loads_models=True,
)
# compose_params only validates text: a failure there is a config error, which no retry fixes.
CONFIG_STEP = Placement(cpu="1", memory="2G", retries=0)


def place(task, placement: Placement, *, cache: bool = True):  # noqa: ANN001, ANN201
    """Apply ``placement`` to a pipeline task and return it."""
    task.set_cpu_limit(placement.cpu).set_memory_limit(placement.memory)
    if placement.gpus:
        task.set_accelerator_type(placement.gpu_type).set_accelerator_limit(placement.gpus)
    for key, value in placement.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for key, operator, effect in placement.tolerations:
        kubernetes.add_toleration(task, key=key, operator=operator, effect=effect)
    if placement.loads_models and MODEL_CACHE_PVC:
        kubernetes.mount_pvc(task, pvc_name=MODEL_CACHE_PVC, mount_path=CACHE_MOUNT)
        task.set_env_variable("HF_HOME", HF_HOME)
        task.set_env_variable("RL2F_WORK_ROOT", WORK_ROOT)
    kubernetes.set_security_context(
        task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER, run_as_non_root=True
    )
    kubernetes.use_field_path_as_env(task, env_name=RUN_ID_ENV, field_path=RUN_ID_FIELD)
    for secret, mapping in SECRETS.items():
        kubernetes.use_secret_as_env(
            task, secret_name=secret, secret_key_to_env=mapping, optional=True
        )
    # KFP 2.17 retries a failed task whatever its exit status (its RetryPolicy has no exit-code
    # filter), so config errors are caught before any work instead: compose_params validates the
    # params (no retries) and run_stage validates again before touching inputs.
    if placement.retries:
        task.set_retry(num_retries=placement.retries, backoff_duration="60s", backoff_factor=2.0)
    task.set_caching_options(cache)
    return task
