"""Wall time of the same ci-profile workflow run by `dvc repro` and by the compiled Kubeflow
pipeline under kfp.local, and the overhead ratio.

kfp.local runs each task in a scratch workspace (inputs linked in, outputs copied out), evaluates
the four models as separate tasks and merges them, and starts a Python process per task; `dvc
repro` runs the stages in one working directory. Usage:

    python benchmarks/orchestration_overhead.py [--profile ci]

Prints a final line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy_project(target: Path, profile: str) -> None:
    from rl2f.config import load_config

    for name in ("dvc.yaml", "profiles", "src", ".dvc", "pipelines"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("tmp", "cache"))
        else:
            shutil.copy2(source, target / name)
    cfg = load_config(REPO / "params.yaml", profile=profile)
    (target / "params.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))


def timed(command: list[str], cwd: Path) -> float:
    env = os.environ | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
    }
    env.pop("RL2F_PROFILE", None)
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="ci")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dvc_dir, kfp_dir = Path(tmp, "dvc"), Path(tmp, "kfp")
        for directory in (dvc_dir, kfp_dir):
            directory.mkdir()
            _copy_project(directory, args.profile)
        subprocess.run(["git", "init", "-q"], cwd=dvc_dir, check=True)
        dvc_s = timed([str(BIN / "dvc"), "repro", "--no-commit"], dvc_dir)
        kfp_s = timed(
            [str(BIN / "rl2f"), "pipeline", "run-local", "--pipeline-root", "root"], kfp_dir
        )
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "profile": args.profile,
        "dvc_repro_s": round(dvc_s, 1),
        "kfp_local_s": round(kfp_s, 1),
        "overhead_ratio": round(kfp_s / dvc_s, 2),
    }
    print(f"dvc repro {dvc_s:.0f} s, kfp.local {kfp_s:.0f} s ({result['overhead_ratio']}x)")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
