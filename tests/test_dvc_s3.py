"""The S3 remote of docs/cluster.md ("Sharing data with DVC"): the documented `dvc remote` commands
against a real S3 server on loopback (moto's), then `dvc push`, a fresh clone's `dvc pull`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "rl2f-dvc"


def _run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    )
    return result


def _documented_remote_commands(endpoint: str) -> list[list[str]]:
    """The `dvc remote ...` lines of docs/cluster.md, with the doc's endpoint and bucket
    replaced by the test server's."""
    text = (REPO / "docs" / "cluster.md").read_text()
    section = text[text.index("## Sharing data with DVC") :]
    lines = re.findall(r"^(dvc remote .+)$", section, re.M)
    assert lines, "docs/cluster.md documents no `dvc remote` commands"
    commands = []
    for line in lines:
        line = line.replace("http://minio.minio.svc.cluster.local:9000", endpoint)
        line = line.replace("s3://rl2f-data/", f"s3://{BUCKET}/")
        commands.append(line.split())
    return commands


@pytest.fixture
def s3_endpoint() -> str:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_dvc_push_and_pull_through_an_s3_remote(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    credentials = {
        "AWS_ACCESS_KEY_ID": "rl2f-test-key",
        "AWS_SECRET_ACCESS_KEY": "rl2f-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        **{
            "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
            "region_name": "us-east-1",
        },
    ).create_bucket(Bucket=BUCKET)
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_"))}
        | credentials
        | {
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
    )
    dvc = str(BIN / "dvc")
    origin = tmp_path / "origin"
    origin.mkdir()
    _run("git", "init", "-q", cwd=origin, env=env)
    _run(dvc, "init", "-q", cwd=origin, env=env)
    _run(dvc, "config", "core.analytics", "false", cwd=origin, env=env)
    for command in _documented_remote_commands(s3_endpoint):
        _run(dvc, *command[1:], cwd=origin, env=env)
    data = origin / "data" / "tasks"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"id": "t1", "prompt": "1 + 1"}\n')
    _run(dvc, "add", "data/tasks", cwd=origin, env=env)
    _run("git", "add", "-A", cwd=origin, env=env)
    _run("git", "commit", "-qm", "data", cwd=origin, env=env)
    _run(dvc, "push", cwd=origin, env=env)

    # The objects are in the bucket, and a fresh clone gets the data back from there alone.
    stored = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).list_objects_v2(Bucket=BUCKET)
    assert stored.get("KeyCount", 0) >= 2  # the directory manifest and the file
    clone = tmp_path / "clone"
    _run("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path, env=env)
    shutil.rmtree(origin / ".dvc" / "cache", ignore_errors=True)  # nothing local to fall back on
    _run(dvc, "pull", cwd=clone, env=env)
    assert (
        clone / "data" / "tasks" / "train.jsonl"
    ).read_text() == '{"id": "t1", "prompt": "1 + 1"}\n'
