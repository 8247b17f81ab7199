"""The MLflow server of k8s/mlflow.yaml, started here with the manifest's own command, arguments
and environment (only the listen address and the stores swapped for loopback ones), answers an
API call that carries the in-cluster Host header; the same server without the manifest's
allowed hosts refuses it, so this test fails if the setting goes missing."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from servers import free_port, stop_process, wait_http

REPO = Path(__file__).resolve().parents[1]
IN_CLUSTER_HOST = "rl2f-mlflow.rl2f.svc.cluster.local:5000"


def _container() -> dict:
    docs = yaml.safe_load_all((REPO / "k8s" / "mlflow.yaml").read_text())
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _local_argv(container: dict, port: int, drop_allowed_hosts: bool = False) -> list[str]:
    """The manifest's command line with this venv's mlflow and a loopback address."""
    command = [*container["command"], *container["args"]]
    assert command[0] == "mlflow", command
    argv = [str(Path(sys.executable).parent / "mlflow")]
    for arg in command[1:]:
        if arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        elif arg.startswith("--port="):
            arg = f"--port={port}"
        elif arg.startswith("--allowed-hosts") and drop_allowed_hosts:
            continue
        argv.append(arg)
    return argv


@contextmanager
def _server(tmp: Path, drop_allowed_hosts: bool = False) -> Iterator[int]:
    container = _container()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {e["name"]: e["value"] for e in container.get("env", [])}
    # What the rl2f-mlflow secret provides in the cluster, here on disk.
    env |= {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": (tmp / "artifacts").as_uri(),
    }
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        _local_argv(container, port, drop_allowed_hosts),
        env=env,
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc)
        yield port
    finally:
        stop_process(proc)
        log.close()


def _get(port: int, path: str, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_manifest_has_no_runtime_installs_and_probes_the_api() -> None:
    container = _container()
    command_line = " ".join([*container["command"], *container.get("args", [])])
    assert "pip install" not in command_line
    assert ":latest" not in container["image"] and ":" in container["image"]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"].startswith("/api/")
    assert {"name": "Host", "value": IN_CLUSTER_HOST} in probe["httpHeaders"]


@pytest.mark.slow
def test_manifest_server_answers_the_in_cluster_host(tmp_path: Path) -> None:
    probe = _container()["readinessProbe"]["httpGet"]
    (tmp_path / "with").mkdir()
    with _server(tmp_path / "with") as port:
        status, body = _get(port, probe["path"], IN_CLUSTER_HOST)
        assert status == 200, body
        assert json.loads(body)["experiment"]["name"] == "Default"
        assert _get(port, "/health", IN_CLUSTER_HOST)[0] == 200
        status, body = _get(port, probe["path"], "evil.example.com")
        assert status == 403, body

    # Without the manifest's --allowed-hosts the same call is refused while /health is fine:
    # the failure the setting exists to prevent.
    (tmp_path / "without").mkdir()
    with _server(tmp_path / "without", drop_allowed_hosts=True) as port:
        assert _get(port, "/health", IN_CLUSTER_HOST)[0] == 200
        status, body = _get(port, probe["path"], IN_CLUSTER_HOST)
        assert status == 403 and b"Invalid Host header" in body, body
