"""Cluster placement of each step: GPUs, CPU and memory, node selector, tolerations, the model
cache volume and the secrets that become environment variables. One helper applies it all, so
the DAG reads as the method, not as Kubernetes plumbing."""

from __future__ import annotations

from dataclasses import dataclass, field

from kfp import kubernetes

MODEL_CACHE_PVC = "rl2f-model-cache"
MODEL_CACHE_MOUNT = "/cache/huggingface"
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


@dataclass(frozen=True)
class Placement:
    cpu: str = "2"
    memory: str = "8G"
    gpus: int = 0
    gpu_type: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[tuple[str, str, str], ...] = ()  # (key, operator, effect)
    retries: int = 2


CPU_STEP = Placement()
GPU_STEP = Placement(
    cpu="8",
    memory="64G",
    gpus=1,
    tolerations=(("nvidia.com/gpu", "Exists", "NoSchedule"),),
)


def place(task, placement: Placement, *, cache: bool = True):  # noqa: ANN001, ANN201
    """Apply ``placement`` to a pipeline task and return it."""
    task.set_cpu_limit(placement.cpu).set_memory_limit(placement.memory)
    if placement.gpus:
        task.set_accelerator_type(placement.gpu_type).set_accelerator_limit(placement.gpus)
    for key, value in placement.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for key, operator, effect in placement.tolerations:
        kubernetes.add_toleration(task, key=key, operator=operator, effect=effect)
    kubernetes.mount_pvc(task, pvc_name=MODEL_CACHE_PVC, mount_path=MODEL_CACHE_MOUNT)
    task.set_env_variable("HF_HOME", MODEL_CACHE_MOUNT)
    for secret, mapping in SECRETS.items():
        kubernetes.use_secret_as_env(
            task, secret_name=secret, secret_key_to_env=mapping, optional=True
        )
    task.set_retry(num_retries=placement.retries, backoff_duration="60s", backoff_factor=2.0)
    task.set_caching_options(cache)
    return task
