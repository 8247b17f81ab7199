"""The bootstrap stage: a real tokenizer, a real Qwen2 model and real TRL SFT on real generated
tasks, at CI size. The SIGKILL test runs the real CLI in subprocesses."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl2f.config import Config, SourceConfig, load_config
from rl2f.errors import DataError
from rl2f.stages import STAGES
from rl2f.stages import bootstrap as stage
from rl2f.tasks.io import write_tasks
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import load_source
from rl2f.tasks.verifiers import verify
from rl2f.training.bootstrap import METRICS_FILE, work_dir_for
from rl2f.training.bootstrap_corpus import (
    FEEDBACK_WORDS,
    LEAD_INS,
    NUDGES,
    build_conversations,
    corpus_texts,
    edit_reply,
    expression_steps,
    worked_solution,
)
from rl2f.training.tiny_model import train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


def arithmetic_tasks(split: str, size: int = 40, seed: int = 1) -> list[Task]:
    """Both in-distribution generators of params.yaml, at a small size."""
    sources = [
        SourceConfig(
            kind="reasoning_gym",
            name="basic_arithmetic",
            domain="math",
            size=size,
            seed=seed,
            config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        ),
        SourceConfig(
            kind="reasoning_gym",
            name="chain_sum",
            domain="math",
            size=size // 2,
            seed=seed + 1,
            config={"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1},
        ),
    ]
    tasks = [task for source in sources for task in load_source(source)]
    return [replace(task, split=split) for task in tasks]


def make_project(root: Path) -> Path:
    """A working directory laid out like the repository: params, the ci profile, task files."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    (root / "profiles").mkdir()
    shutil.copy(REPO_ROOT / "profiles" / "ci.yaml", root / "profiles" / "ci.yaml")
    write_tasks(root / "data/tasks/train.parquet", arithmetic_tasks("train", 40, seed=1))
    write_tasks(root / "data/tasks/eval_id.parquet", arithmetic_tasks("eval_id", 12, seed=7))
    return root


def ci_config(root: Path, *overrides: str) -> Config:
    return load_config(
        root / "params.yaml",
        [
            f"data.out_dir={root / 'data/tasks'}",
            f"model.base_dir={root / 'models/base'}",
            "tracking.enabled=false",
            "model.tiny.sft_steps=10",
            *overrides,
        ],
        profile="ci",
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("bootstrap_project"))


@pytest.fixture(scope="module")
def trained(project: Path) -> Iterator[tuple[Config, dict]]:
    cfg = ci_config(project)
    metrics = stage.run(cfg)
    assert metrics is not None
    yield cfg, metrics


# ---------------------------------------------------------------- corpus
@pytest.mark.parametrize(
    ("expression", "steps", "value"),
    [
        ("5 + 3", ["5 + 3 = 8"], "8"),
        ("1 - 5 - 2", ["1 - 5 = -4", "-4 - 2 = -6"], "-6"),
        ("( -9 - 8 )", ["-9 - 8 = -17"], "-17"),
        ("2 + -1", ["2 + -1 = 1"], "1"),
        ("3 * (4 + 1)", ["4 + 1 = 5", "3 * 5 = 15"], "15"),
        ("-( -( -91 - -19 ) )", ["-91 - -19 = -72", "-(-72) = 72", "-(72) = -72"], "-72"),
    ],
)
def test_expression_steps(expression: str, steps: list[str], value: str) -> None:
    assert expression_steps(expression) == (steps, value)


@pytest.mark.parametrize(
    "expression", ["7 / 2", "x + 1", "2 ** 3", "1 +", "4 / 0", "-" * 5000 + "1", "1.5 + 1"]
)
def test_expression_steps_rejects_what_it_cannot_work_out(expression: str) -> None:
    with pytest.raises(ValueError):
        expression_steps(expression)


def test_worked_solution_shows_steps_and_falls_back_to_the_answer_line() -> None:
    task = arithmetic_tasks("train", 4)[0]
    expression = task.verifier_config["entry"]["metadata"]["expression"]
    solution = worked_solution(task)
    assert solution.splitlines()[-1] == f"Answer: {task.answer}"
    assert f"= {task.answer}" in solution.splitlines()[-2]
    assert verify(task, solution).correct, (expression, solution)
    bare = Task(
        domain="math", source="x", prompt="What is six times seven?", answer="42", verifier="math"
    )
    assert worked_solution(bare) == "Answer: 42"
    # An expression that disagrees with the answer is not trusted.
    wrong = Task(
        domain="math",
        source="x",
        prompt="p",
        answer="5",
        verifier="math",
        metadata={"expression": "2 + 2"},
    )
    assert worked_solution(wrong) == "Answer: 5"


def test_corpus_has_no_feedback_content_and_every_trained_reply_is_correct() -> None:
    """No training example may show what a critique says: every user turn is a new task (with
    at most a small-talk opener) or a bare nudge that carries no information, and a nudge only
    ever follows a near miss that is left out of the loss. Every reply the loss covers is the
    verified-correct answer to the question under discussion."""
    tasks = arithmetic_tasks("train", 40)
    by_prompt = {task.prompt: task for task in tasks}
    conversations = build_conversations(
        tasks, count=300, questions_per_conversation=3, seed=5, retry_rate=0.3
    )
    cfg = load_config(REPO_ROOT / "params.yaml")
    informative = ("high", "low", "larger", "smaller", "digit", "sign", "off by", "check", "step")
    for nudge in NUDGES:
        assert not any(ch.isdigit() for ch in nudge), nudge
        assert not any(word in nudge.casefold() for word in informative), nudge
        assert nudge != cfg.teacher.retry_message, "the base must not have seen the eval's retry"
    sizes, nudged, questions = set(), 0, 0
    for messages in conversations:
        asked: list[str] = []
        prompt = None
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                assert prompt is not None
                verdict = verify(by_prompt[prompt], message["content"])
                if message.get("train") is False:
                    assert not verdict.correct and verdict.extracted is not None
                    assert messages[i + 1]["content"] in NUDGES
                else:
                    assert "train" not in message and verdict.correct
                continue
            question = message["content"]
            if question in NUDGES:
                assert messages[i - 1].get("train") is False, "a nudge follows a near miss only"
                nudged += 1
                continue
            if question in by_prompt:
                prompt = question
            else:
                assert i > 0, "the first turn is the bare task prompt, as in a rollout"
                lead_in, prompt = question.split("\n", 1)
                assert lead_in in LEAD_INS
            assert prompt not in asked, "a question asked twice would invite a revision"
            asked.append(prompt)
        sizes.add(len(asked))
        questions += len(asked)
    assert sizes == {1, 2, 3}
    assert 0.2 < nudged / questions < 0.4, "about retry_rate of the questions are nudged"


def test_near_miss_is_left_out_of_the_loss() -> None:
    """The chat template renders a ``"train": False`` reply like any other but outside the
    assistant mask: the model sees near misses in context and never learns to make them."""
    tasks = arithmetic_tasks("train", 20)
    conversations = build_conversations(
        tasks, count=60, questions_per_conversation=2, seed=1, retry_rate=1.0
    )
    tokenizer = train_tokenizer(corpus_texts(conversations), vocab_size=300)
    messages = next(m for m in conversations if any(x.get("train") is False for x in m))
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    marked = tokenizer.apply_chat_template(
        messages, return_assistant_tokens_mask=True, return_dict=True
    )
    unmarked = tokenizer.apply_chat_template(
        plain, return_assistant_tokens_mask=True, return_dict=True
    )
    assert marked["input_ids"] == unmarked["input_ids"]
    dropped = [
        a - b for a, b in zip(unmarked["assistant_masks"], marked["assistant_masks"], strict=True)
    ]
    assert set(dropped) == {0, 1}
    miss = next(m["content"] for m in messages if m.get("train") is False)
    miss_ids = tokenizer(miss + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert sum(dropped) == len(miss_ids)


def test_edit_corpus_fixes_each_near_miss_with_a_correct_edit_after_filler_or_a_nudge() -> None:
    """model.tiny.edit_rate=1 and filler_nudge_rate=1: after every near miss the user writes
    random words with no feedback word among them, and the trained reply edits the wrong
    answer to the verified-correct one ("-76 - 1 = -77"). With both rates 0 the corpus is the
    default one, draw for draw."""
    tasks = arithmetic_tasks("train", 40)
    by_prompt = {task.prompt: task for task in tasks}
    args = {"count": 200, "questions_per_conversation": 2, "seed": 5, "retry_rate": 0.5}
    assert build_conversations(tasks, **args) == build_conversations(
        tasks, **args, edit_rate=0.0, filler_nudge_rate=0.0
    )
    conversations = build_conversations(tasks, **args, edit_rate=1.0, filler_nudge_rate=1.0)
    forbidden = FEEDBACK_WORDS | {w.casefold().strip(".?,") for n in NUDGES for w in n.split()}
    edits = 0
    for messages in conversations:
        prompt = None
        for i, message in enumerate(messages):
            if message["role"] == "user":
                prompt = next((p for p in by_prompt if message["content"].endswith(p)), prompt)
            if message.get("train") is not False:
                continue
            filler, reply = messages[i + 1]["content"], messages[i + 2]["content"]
            words = {w.casefold().strip(".") for w in filler.split()}
            assert words and not words & forbidden, filler
            assert not any(ch.isdigit() for ch in filler), filler
            wrong = int(message["content"].rsplit("Answer: ", 1)[1])
            task = by_prompt[prompt]
            assert reply == edit_reply(message["content"], task)
            assert reply.startswith(f"{wrong} ") and verify(task, reply).correct
            start, operator, amount = reply.split(" = ")[0].split()
            moved = int(start) + (int(amount) if operator == "+" else -int(amount))
            assert moved == int(task.answer)
            edits += 1
    assert edits > 50


def test_corpus_is_deterministic_under_a_seed() -> None:
    tasks = arithmetic_tasks("train", 20)
    first = build_conversations(tasks, count=50, questions_per_conversation=2, seed=3)
    assert first == build_conversations(tasks, count=50, questions_per_conversation=2, seed=3)
    assert first != build_conversations(tasks, count=50, questions_per_conversation=2, seed=4)


# ---------------------------------------------------------------- chat template
def test_chat_template_is_prefix_stable_and_masks_exactly_the_replies() -> None:
    """The rollout appends turns to token ids it already has: rendering a longer conversation
    must never change the tokens of the shorter one, a generation prompt plus the reply plus
    <|im_end|> must be exactly the rendered conversation, and the assistant mask TRL trains on
    must cover exactly those reply tokens."""
    tasks = arithmetic_tasks("train", 20)
    conversations = build_conversations(tasks, count=40, questions_per_conversation=3, seed=0)
    tokenizer = train_tokenizer(corpus_texts(conversations), vocab_size=300)
    unseen = "That is not correct. Check the sign of the second number, then try again."
    for messages in conversations[:20]:
        messages = [*messages, {"role": "user", "content": unseen}]
        rendered = [
            tokenizer.apply_chat_template(messages[: i + 1])["input_ids"]
            for i in range(len(messages))
        ]
        for shorter, longer in zip(rendered, rendered[1:], strict=False):
            assert longer[: len(shorter)] == shorter
        full = tokenizer.apply_chat_template(
            messages[:-1], return_assistant_tokens_mask=True, return_dict=True
        )
        expected_mask = [0] * len(full["input_ids"])
        for i, message in enumerate(messages[:-1]):
            if message["role"] != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
            prompt_ids = prompt["input_ids"]
            reply = tokenizer(message["content"], add_special_tokens=False)["input_ids"]
            reply = [*reply, tokenizer.eos_token_id]
            span = slice(len(prompt_ids), len(prompt_ids) + len(reply))
            assert full["input_ids"][: len(prompt_ids)] == prompt_ids
            assert full["input_ids"][span] == reply
            expected_mask[span] = [1] * len(reply)
        assert full["assistant_masks"] == expected_mask


def test_tokenizer_keeps_every_character_and_splits_digits() -> None:
    tokenizer = train_tokenizer(["Calculate 12 + 30.", "Answer: 42"], vocab_size=300)
    text = "Schätze 1234 ≈ ∑ — ok"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    digits = [t for t in tokenizer.tokenize("1234") if t.strip("Ġ")]
    assert digits == ["1", "2", "3", "4"]


# ---------------------------------------------------------------- the stage
def test_stage_saves_a_model_that_loads_and_generates(trained: tuple[Config, dict]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, metrics = trained
    base = Path(cfg.model.base_dir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    assert model.config.model_type == "qwen2"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.padding_side == "left", "batched generation pads on the left"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Calculate 2 + 3.\nGive your final answer after 'Answer:'."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]

    saved = json.loads((base / METRICS_FILE).read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["n_eval"] == 18 and saved["sft_steps"] == cfg.model.tiny.sft_steps
    for key in ("first_turn_accuracy_greedy", "first_turn_accuracy_sampled"):
        assert 0.0 <= saved[key] <= 1.0
    solved = round(18 * saved["first_turn_accuracy_sampled"])
    assert saved["followup_n"] == 18 - solved
    assert not work_dir_for(base).exists(), "checkpoints are removed once the model is saved"
    assert not list(base.parent.glob(".base*")), "no staging folder is left behind"


def test_stage_is_deterministic_under_a_seed(trained: tuple[Config, dict], tmp_path: Path) -> None:
    cfg, _ = trained
    again = cfg.model_copy(deep=True)
    again.model.base_dir = str(tmp_path / "base")
    stage.run(again)
    first, second = Path(cfg.model.base_dir), Path(again.model.base_dir)
    assert _weights(first).keys() == _weights(second).keys()
    for name, tensor in _weights(first).items():
        assert torch.equal(tensor, _weights(second)[name]), name
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_stage_is_skipped_when_a_real_model_is_named(
    project: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = ci_config(project, f"model.student={tiny_model_dir}", f"model.base_dir={tmp_path}/b")
    with caplog.at_level(logging.INFO, logger="rl2f.stages.bootstrap"):
        assert stage.run(cfg) is None
    assert f"using {tiny_model_dir}, skipping bootstrap" in caplog.text
    # DVC declares models/base as the stage's output: it names the real model, nothing more.
    assert [p.name for p in (tmp_path / "b").iterdir()] == [stage.STUDENT_FILE]
    recorded = json.loads((tmp_path / "b" / stage.STUDENT_FILE).read_text())
    assert recorded == {"student": str(tiny_model_dir)}


def test_zero_steps_saves_the_untrained_model(project: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = ci_config(project, "model.tiny.sft_steps=0", f"model.base_dir={tmp_path}/base")
    metrics = stage.run(cfg)
    assert metrics is not None and metrics["sft_steps"] == 0 and "train_loss" not in metrics
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "base").config.model_type == "qwen2"


def test_stage_is_registered() -> None:
    assert STAGES["bootstrap"].module == "rl2f.stages.bootstrap"


def test_missing_task_file_is_one_clear_error(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "data/tasks/train.parquet").unlink()
    with pytest.raises(DataError, match=r"train\.parquet: task file not found"):
        stage.run(ci_config(root))


def test_no_train_split_tasks_is_one_clear_error(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    write_tasks(root / "data/tasks/train.parquet", arithmetic_tasks("eval_id", 4))
    with pytest.raises(DataError, match="no train-split tasks"):
        stage.run(ci_config(root))


# ---------------------------------------------------------------- resume
def _cli(root: Path, *overrides: str) -> list[str]:
    args = ["-S", "tracking.enabled=false"]
    for override in overrides:
        args += ["-S", override]
    return [sys.executable, "-m", "rl2f.cli", "bootstrap", "--profile", "ci", *args]


def _bootstrap_on(root: Path, cpus: set[int] | None, *overrides: str) -> dict[str, torch.Tensor]:
    """Bootstrap with the real CLI, allowed to run only on ``cpus`` (None: every core)."""
    done = subprocess.run(
        _cli(root, "model.tiny.sft_steps=40", *overrides),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return _weights(root / "models/base")


def _threads_change_a_matmul() -> bool:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 4096, generator=generator), torch.randn(4096, 512, generator=generator)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = a @ b
        torch.set_num_threads(2)
        return not torch.equal(one, a @ b)
    finally:
        torch.set_num_threads(threads)


def test_the_bootstrapped_model_does_not_depend_on_the_machines_core_count(
    tmp_path: Path,
) -> None:
    """torch splits sums across its threads, so the thread count changes the trained weights
    (the first pair differs); model.cpu_threads=1 gives the same weights whether the process
    may use one core or all of them (as under ``taskset -c 0``, or on a 1-core pod)."""
    one = make_project(tmp_path / "one_thread")
    two = make_project(tmp_path / "two_threads")
    one_thread = _bootstrap_on(one, None, "model.cpu_threads=1")
    two_threads = _bootstrap_on(two, None, "model.cpu_threads=2")
    # Some CPUs' kernels give the same sums at any thread count (MKL on an AMD EPYC VM did);
    # where a plain matmul shows they do not, the thread count must show in the weights.
    if _threads_change_a_matmul():
        assert any(not torch.equal(one_thread[k], two_threads[k]) for k in one_thread)

    single_core = make_project(tmp_path / "single_core")
    every_core = make_project(tmp_path / "every_core")
    first_cpu = {min(os.sched_getaffinity(0))}
    pinned = _bootstrap_on(single_core, first_cpu, "model.cpu_threads=1")
    free = _bootstrap_on(every_core, None, "model.cpu_threads=1")
    for name, tensor in free.items():
        assert torch.equal(tensor, pinned[name]), name


@pytest.mark.slow
def test_rerun_after_sigkill_resumes_from_the_last_checkpoint(tmp_path: Path) -> None:
    """Kill the real CLI mid-training, rerun it: it resumes from the checkpoint and finishes
    with exactly the weights of a run that was never interrupted."""
    root = make_project(tmp_path / "killed")
    overrides = ("model.tiny.sft_steps=200", "model.tiny.sft_save_steps=20")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    work_dir = root / "models/base.checkpoints"
    victim = subprocess.Popen(
        _cli(root, *overrides),
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(work_dir.glob("checkpoint-*/trainer_state.json")):
        assert victim.poll() is None, victim.stderr.read() if victim.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (root / "models/base").exists()

    resumed = subprocess.run(
        _cli(root, *overrides), cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr and "checkpoint-" in resumed.stderr
    assert not work_dir.exists()

    clean = make_project(tmp_path / "clean")
    straight = subprocess.run(
        _cli(clean, *overrides), cwd=clean, env=env, capture_output=True, text=True, timeout=600
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed_weights = _weights(root / "models/base")
    for name, tensor in _weights(clean / "models/base").items():
        assert torch.equal(tensor, killed_weights[name]), name
