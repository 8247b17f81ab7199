"""What the training tests share: real tasks, a small policy with something to learn, and a
workspace laid out like the repository (params.yaml, profiles/ci.yaml, data/tasks/train.parquet).

A randomly initialised model never solves a task, so every GRPO group would have reward 0 and
advantage 0, and nothing could be checked. The "coin" policy is the tiny model after a few
seconds of supervised training on tasks whose answer is always 9, with targets "Answer: 9" and
"Answer: 8" in equal numbers: sampled, it is right about a third of the time and, when wrong,
gets a real critique from the oracle teacher. Groups then mix solved and unsolved
conversations, at turn 1 and after feedback, which is what the loss and credit tests need.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rl2f.config import Config, load_config
from rl2f.tasks.io import write_tasks
from rl2f.tasks.schema import Task
from rl2f.training.checkpoints import TRAINER_STATE

REPO_ROOT = Path(__file__).resolve().parents[1]
ANSWER = "9"
WRONG = "8"


def sum_tasks(count: int = 8) -> list[Task]:
    """Real math tasks in the prompt format of the reasoning_gym source, verified by the real
    ``math`` verifier."""
    return [
        Task(
            domain="math",
            source="test:sum_to_nine",
            prompt=f"Calculate {a} + {9 - a}.\nGive your final answer after 'Answer:'.",
            answer=ANSWER,
            verifier="math",
            split="train",
        )
        for a in range(count)
    ]


def oracle_critiques(task: Task, turns: int = 3) -> list[str]:
    """The oracle teacher's critiques of the wrong attempt at each turn (its phrasing varies
    with the turn), so the coin policy has seen real feedback before it is rolled out."""
    from rl2f.tasks.verifiers import verify
    from rl2f.teachers import CritiqueRequest, OracleTeacher

    attempt = f"Answer: {WRONG}"
    conversation = [
        {"role": "user", "content": task.prompt},
        {"role": "assistant", "content": attempt},
    ]
    requests = [
        CritiqueRequest(task, conversation, attempt, verify(task, attempt), turn)
        for turn in range(1, turns + 1)
    ]
    return sorted(set(OracleTeacher("diagnostic").critique(requests)))


def coin_conversations(task: Task) -> list[list[dict[str, str]]]:
    """Conversations whose every reply is "Answer: 9" or "Answer: 8": the question alone, and
    the question, the wrong answer and an oracle critique of it."""
    replies = [f"Answer: {ANSWER}", f"Answer: {WRONG}"]
    question = {"role": "user", "content": task.prompt}
    wrong = {"role": "assistant", "content": f"Answer: {WRONG}"}
    conversations = []
    for critique in oracle_critiques(task):
        for reply in replies:
            conversations.append([question, {"role": "assistant", "content": reply}])
            conversations.append(
                [
                    question,
                    wrong,
                    {"role": "user", "content": critique},
                    {"role": "assistant", "content": reply},
                ]
            )
    return conversations


def train_coin_policy(base_dir: Path, out_dir: Path, steps: int = 60) -> Path:
    """Fine-tune the model in ``base_dir`` on :func:`coin_conversations` of every
    :func:`sum_tasks` prompt; saved with its tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # Loss on the replies only: the model must learn to answer, not to write critiques.
    batch = tokenizer.apply_chat_template(
        [conversation for task in sum_tasks(4) for conversation in coin_conversations(task)],
        return_dict=True,
        return_assistant_tokens_mask=True,
        padding=True,
        return_tensors="pt",
    )
    replies = batch.pop("assistant_masks").bool()
    labels = batch["input_ids"].masked_fill(~replies, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def make_workspace(
    root: Path, model_dir: Path, tasks: list[Task], overrides: Sequence[str] = ()
) -> Config:
    """params.yaml + profiles/ from the repository and the tasks as data/tasks/train.parquet in
    ``root``; returns the ci profile with ``model_dir`` as the student and every path of the run
    under ``root``."""
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO_ROOT / "profiles", root / "profiles", dirs_exist_ok=True)
    write_tasks(root / "data" / "tasks" / "train.parquet", tasks)
    return load_config(
        root / "params.yaml", [*workspace_overrides(root, model_dir), *overrides], profile="ci"
    )


def workspace_overrides(root: Path, model_dir: Path) -> list[str]:
    """``-S`` overrides that keep a run inside ``root`` (also usable on the command line)."""
    return [
        f"model.student={model_dir}",
        "tracking.enabled=false",
        f"data.out_dir={root / 'data' / 'tasks'}",
        f"train.rl2f_dir={root / 'models' / 'rl2f'}",
        f"train.single_turn_dir={root / 'models' / 'single_turn'}",
        f"distill.episodes_dir={root / 'data' / 'episodes' / 'train'}",
        f"distill.out_dir={root / 'models' / 'rl2f_critic'}",
    ]


def shared_coin_policy(base_temp: Path, tiny_model_dir: Path) -> Path:
    """One coin policy per test session, whichever test module asks first."""
    out_dir = base_temp / "coin_policy"
    if not (out_dir / "config.json").exists():
        staging = base_temp / "coin_policy.staging"
        shutil.rmtree(staging, ignore_errors=True)
        train_coin_policy(tiny_model_dir, staging)
        staging.rename(out_dir)
    return out_dir


def cli_command(stage: str, overrides: list[str]) -> list[str]:
    """``rl2f <stage> --profile ci -S ...`` in a fresh interpreter."""
    command = [sys.executable, "-m", "rl2f.cli", stage, "--profile", "ci"]
    for override in overrides:
        command += ["-S", override]
    return command


def subprocess_env() -> dict[str, str]:
    """Offline, quiet, one thread per process: the machine is shared."""
    return os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def kill_after_first_checkpoint(command: list[str], root: Path, work_dir: Path) -> None:
    """Start ``command`` and SIGKILL it once its first complete checkpoint is on disk."""
    kill_when(command, root, lambda: bool(list(work_dir.glob(f"checkpoint-*/{TRAINER_STATE}"))))


def kill_when(
    command: list[str],
    root: Path,
    ready: Callable[[], bool],
    env: dict[str, str] | None = None,
) -> None:
    """Start ``command`` in ``root`` and SIGKILL it, with every process it started, as soon as
    ``ready()`` holds (polled every few milliseconds); its output goes to
    ``root/interrupted.log``."""
    log = (root / "interrupted.log").open("w")
    process = subprocess.Popen(
        command,
        cwd=root,
        env=env or subprocess_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: `dvc repro` runs the stage as a child
    )
    deadline = time.monotonic() + 600
    try:
        while not ready():
            assert process.poll() is None, (root / "interrupted.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready to be killed within 10 minutes"
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL


def run_cli(command: list[str], root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``command`` in ``root`` to the end; fails the test with its stderr if it fails."""
    done = subprocess.run(
        command, cwd=root, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_same_weights(got_dir: Path, expected_dir: Path) -> None:
    """Every tensor of the two published models is bit-for-bit equal (resume must not change
    what training computes, only where it starts)."""
    from safetensors.torch import load_file

    got = load_file(got_dir / "model.safetensors")
    expected = load_file(expected_dir / "model.safetensors")
    assert got.keys() == expected.keys()
    differ = [name for name in expected if not torch_equal(got[name], expected[name])]
    assert not differ, f"weights differ from the uninterrupted run's: {differ}"


def torch_equal(a, b) -> bool:  # noqa: ANN001
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
