"""What can be checked of the image and the cluster manifests without a Docker engine or a
cluster: the manifests render and validate strictly, the Dockerfile installs from the lock and
ends in the `rl2f` entrypoint, and `rl2f cluster` fails clearly when no cluster answers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl2f.cluster import render

REPO = Path(__file__).resolve().parents[1]


def _validate(path: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run(
        [str(tool), "--strict", str(path)], capture_output=True, text=True, timeout=120
    )


def test_manifests_validate_strictly(tmp_path: Path) -> None:
    objects = render(REPO / "k8s")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for expected in [
        ("Namespace", "rl2f"),
        ("ServiceAccount", "rl2f-pipeline-runner"),
        ("RoleBinding", "rl2f-pipeline-runner"),
        ("PersistentVolumeClaim", "rl2f-model-cache"),
        ("Deployment", "rl2f-mlflow"),
        ("Service", "rl2f-mlflow"),
        ("Secret", "rl2f-s3"),
        ("Deployment", "rl2f-teacher"),
    ]:
        assert expected in kinds
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(objects))
    result = _validate(rendered)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # kubernetes-validate only warns (exit 0) on kinds it has no schema for: that is a failure.
    assert "WARN" not in output and "unknown" not in output.lower(), output
    assert output.count("passed") == len(objects)


def test_bad_manifest_is_rejected(tmp_path: Path) -> None:
    objects = render(REPO / "k8s")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "two"
    deployment["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    assert _validate(bad).returncode != 0


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_render_matches_kubectl_kustomize() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "k8s")], capture_output=True, text=True, check=True
    ).stdout
    theirs = sorted(
        (o["kind"], o["metadata"]["name"], yaml.safe_dump(o, sort_keys=True))
        for o in yaml.safe_load_all(out)
    )
    ours = sorted(
        (o["kind"], o["metadata"]["name"], yaml.safe_dump(o, sort_keys=True))
        for o in render(REPO / "k8s")
    )
    assert ours == theirs


def test_dockerfile_installs_the_lock_and_runs_rl2f() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", dockerfile, re.M)
    assert "requirements.lock" in dockerfile and "pip install --compile -r" in dockerfile
    assert '"vllm"' in dockerfile
    assert re.search(r"^USER rl2f$", dockerfile, re.M)  # not root
    assert re.search(r'^ENTRYPOINT \["rl2f"\]$', dockerfile, re.M)
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in copied.split():
            assert (REPO / path).exists(), f"Dockerfile copies {path}, which does not exist"
    # The lock the image installs pins every package, and torch is the one line it rewrites.
    lock = (REPO / "requirements.lock").read_text().splitlines()
    pins = [line for line in lock if line and not line.startswith((" ", "#"))]
    assert pins and all("==" in line for line in pins)
    assert any(line.startswith("torch==") and line.endswith("+cpu") for line in pins)
    # The entrypoint the image runs is this project's console script.
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'rl2f = "rl2f.cli:main"' in pyproject


def _cluster_cli(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rl2f.cli", "cluster", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"} | env,
    )


def test_cluster_cli_without_a_cluster(tmp_path: Path) -> None:
    result = _cluster_cli({"KUBECONFIG": str(tmp_path / "missing")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "rl2f cluster: error: no cluster configured: set KUBECONFIG or run inside a cluster"
    )
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    result = _cluster_cli({"KUBECONFIG": str(config)})
    assert result.returncode == 2
    assert "cluster at https://127.0.0.1:1 is not reachable" in result.stderr.splitlines()[-1]
