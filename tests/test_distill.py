"""Critique distillation on real episodes: the rollout stage (rl2f.rollout.run_episodes with the
oracle teacher) rolls out the coin policy of training_helpers on real math tasks, and the
distill stage trains on them."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import (
    ANSWER,
    assert_same_weights,
    cli_command,
    kill_after_first_checkpoint,
    make_workspace,
    run_cli,
    shared_coin_policy,
    sum_tasks,
    workspace_overrides,
)

from rl2f.config import Config
from rl2f.episodes import Episode, read_episodes
from rl2f.errors import DataError, UserError
from rl2f.tasks.schema import Task
from rl2f.teachers.self_critic import self_critique_messages
from rl2f.training.checkpoints import checkpoint_dir
from rl2f.training.distill import Example, build_critic_trainer, build_examples

torch.set_num_threads(1)

ROLLOUT = ["rollout.num_generations=4", "train.max_turns=3", "rollout.max_tasks=8"]
ANSWER_TOKEN = re.compile(rf"(?<![\d.]){ANSWER}(?![\d.])")


@pytest.fixture(scope="session")
def coin_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return shared_coin_policy(tmp_path_factory.getbasetemp(), tiny_model_dir)


def rolled_out_workspace(root: Path, coin_model_dir: Path, *overrides: str) -> Config:
    """A workspace with the coin policy as the RL2F policy and its episodes from the real
    rollout stage (oracle teacher)."""
    from rl2f.stages import rollout

    cfg = make_workspace(root, coin_model_dir, sum_tasks(), [*ROLLOUT, *overrides])
    shutil.copytree(coin_model_dir, cfg.train.rl2f_dir)
    rollout.write_outputs(cfg.distill.episodes_dir, *rollout.roll_out(cfg, progress=False))
    return cfg


@pytest.fixture(scope="module")
def rolled_out(tmp_path_factory: pytest.TempPathFactory, coin_model_dir: Path):
    root = tmp_path_factory.mktemp("distill")
    cfg = rolled_out_workspace(root, coin_model_dir)
    episodes = read_episodes(Path(cfg.distill.episodes_dir) / "episodes.parquet")
    return root, cfg, episodes, {task.id: task for task in sum_tasks()}


def with_fix_filter(cfg: Config, only_followed_by_fix: bool) -> Config:
    return cfg.model_copy(
        update={
            "distill": cfg.distill.model_copy(update={"only_followed_by_fix": only_followed_by_fix})
        }
    )


def assert_example_is_public(example: Example, task: Task, episodes: list[Episode]) -> None:
    """Checked from the episodes, not with the code under test: the problem statement, then
    only text the student wrote or the teacher said in this task's episodes, then the request;
    no text the student did not write names the answer."""
    own = {t.text for e in episodes if e.task_id == task.id for t in e.student_turns}
    said = {t.text for e in episodes if e.task_id == task.id for t in e.teacher_turns}
    assert example.prompt[0] == {"role": "user", "content": task.prompt}
    conversation = example.prompt[:-1] if example.kind == "critique" else example.prompt
    for message in conversation[1:]:
        if message["role"] == "assistant":
            assert message["content"] in own
        else:
            assert message["role"] == "user" and message["content"] in said
            assert not ANSWER_TOKEN.search(message["content"]), message
    assert not ANSWER_TOKEN.search(task.prompt)
    if example.kind == "critique":
        request = example.prompt[-1]
        assert request["role"] == "user" and request["content"] not in said
        assert not ANSWER_TOKEN.search(request["content"])
        (target,) = example.completion
        assert target["content"] in said and not ANSWER_TOKEN.search(target["content"])
    else:
        (target,) = example.completion
        assert target["content"] in own


@pytest.mark.parametrize("only_followed_by_fix", [True, False])
def test_no_example_holds_privileged_data(rolled_out, only_followed_by_fix: bool) -> None:
    _, cfg, episodes, tasks = rolled_out
    examples = build_examples(with_fix_filter(cfg, only_followed_by_fix), episodes, tasks)
    kinds = {example.kind for example in examples}
    assert kinds == {"critique", "student"}
    for example in examples:
        assert_example_is_public(example, tasks[example.task_id], episodes)
    critiques = sum(e.kind == "critique" for e in examples)
    teacher_turns = sum(len(e.teacher_turns) for e in episodes)
    fixed = sum(
        1
        for e in episodes
        for turn, after in zip(e.turns, e.turns[1:], strict=False)
        if turn.role == "teacher" and after.correct and not turn.fell_back
    )
    assert critiques == (fixed if only_followed_by_fix else teacher_turns)
    assert sum(e.kind == "student" for e in examples) == sum(
        e.solved_at is not None for e in episodes
    )


def test_a_critique_that_reveals_the_answer_is_refused(rolled_out) -> None:
    _, cfg, episodes, tasks = rolled_out
    episode = next(e for e in episodes if e.teacher_turns)
    turns = [
        dataclasses.replace(t, text=f"Close. The answer is {ANSWER}.") if t.role == "teacher" else t
        for t in episode.turns
    ]
    leaking = dataclasses.replace(episode, turns=turns)
    with pytest.raises(DataError, match="reveals the privileged answer"):
        build_examples(with_fix_filter(cfg, False), [leaking], tasks)


def test_fallback_messages_are_not_distillation_targets(rolled_out) -> None:
    """A fallback (after leaks, or for an empty critique) is config text, not a critique: it is
    never a target, even where the next attempt was right."""
    _, cfg, episodes, tasks = rolled_out
    fallback = cfg.teacher.fallback_message
    marked = []
    for episode in episodes:
        turns = [
            dataclasses.replace(t, text=fallback, fell_back=True) if t.role == "teacher" else t
            for t in episode.turns
        ]
        marked.append(dataclasses.replace(episode, turns=turns))
    assert any(e.teacher_turns for e in marked)
    unfiltered = with_fix_filter(cfg, False)
    assert any(e.kind == "critique" for e in build_examples(unfiltered, episodes, tasks))
    examples = build_examples(unfiltered, marked, tasks)
    assert examples and not any(e.kind == "critique" for e in examples)
    assert all(e.completion[0]["content"] != fallback for e in examples)


def test_distill_refuses_episodes_of_an_evaluation_split(rolled_out) -> None:
    from rl2f.stages import distill

    _, cfg, episodes, tasks = rolled_out
    leaked_in = [*episodes[:2], dataclasses.replace(episodes[2], split="eval_id")]
    with pytest.raises(UserError, match="episode 2 is from the evaluation split 'eval_id'"):
        distill.check_training_episodes(leaked_in, tasks, Path("episodes.parquet"))
    distill.check_training_episodes(episodes, tasks, Path("episodes.parquet"))


def test_episodes_of_unknown_tasks_or_without_critiques_are_data_errors(rolled_out) -> None:
    from rl2f.training.distill import train_critic

    _, cfg, episodes, tasks = rolled_out
    with pytest.raises(DataError, match="is not in"):
        build_examples(cfg, episodes, {})
    solved_at_once = [e for e in episodes if e.solved_at == 1]
    examples = build_examples(cfg, solved_at_once, tasks)
    assert examples and all(e.kind == "student" for e in examples)
    with pytest.raises(DataError, match="no critique examples"):
        train_critic(cfg, examples, cfg.train.rl2f_dir)


def with_distill(cfg: Config, **update: object) -> Config:
    return cfg.model_copy(update={"distill": cfg.distill.model_copy(update=update)})


def test_answers_only_ablation_trains_on_the_solving_turns_alone(rolled_out, tmp_path) -> None:
    """include_critiques=false: plain fine-tuning on its own correct answers, which must not
    stop for want of critique examples."""
    from rl2f.training.distill import train_critic

    _, cfg, episodes, tasks = rolled_out
    ablation = with_distill(
        cfg, include_critiques=False, steps=1, out_dir=str(tmp_path / "rl2f_answers_only")
    )
    examples = build_examples(ablation, episodes, tasks)
    solved = sum(e.solved_at is not None for e in episodes)
    assert solved and len(examples) == solved
    assert all(e.kind == "student" for e in examples)
    for example in examples:
        assert_example_is_public(example, tasks[example.task_id], episodes)
    summary = train_critic(ablation, examples, cfg.train.rl2f_dir)
    assert summary["examples"] == {"critique": 0, "student": solved}
    assert (tmp_path / "rl2f_answers_only" / "config.json").exists()


def test_answers_only_without_solved_episodes_or_without_any_kind_fails_clearly(
    rolled_out,
) -> None:
    from rl2f.training.distill import train_critic

    _, cfg, episodes, tasks = rolled_out
    ablation = with_distill(cfg, include_critiques=False)
    unsolved = [e for e in episodes if e.solved_at is None]
    examples = build_examples(ablation, unsolved, tasks)
    assert examples == []
    with pytest.raises(DataError, match="no distillation examples .*include_critiques is false"):
        train_critic(ablation, examples, cfg.train.rl2f_dir)
    nothing = with_distill(cfg, include_critiques=False, include_student_turns=False)
    with pytest.raises(UserError, match="both false: nothing to train on"):
        build_examples(nothing, episodes, tasks)


class RecordingEngine:
    """The real transformers engine, keeping the conversations it is asked to answer."""

    def __init__(self, engine) -> None:  # noqa: ANN001
        self.engine, self.tokenizer, self.conversations = engine, engine.tokenizer, []

    def chat(self, conversations, sampling):  # noqa: ANN001, ANN201
        self.conversations += conversations
        return self.engine.chat(conversations, sampling)

    def generate(self, prompts, sampling, return_logprobs=False):  # noqa: ANN001, ANN201
        return self.engine.generate(prompts, sampling, return_logprobs)

    def close(self) -> None:
        self.engine.close()


def test_critique_inputs_are_what_the_self_teacher_sends(rolled_out) -> None:
    from rl2f.engines import make_engine
    from rl2f.tasks.verifiers import verify
    from rl2f.teachers import CritiqueRequest, make_teacher

    _, cfg, episodes, tasks = rolled_out
    examples = [e for e in build_examples(cfg, episodes, tasks) if e.kind == "critique"]
    engine = RecordingEngine(make_engine(cfg.rollout.engine, cfg.train.rl2f_dir))
    teacher = make_teacher(cfg.teacher.model_copy(update={"kind": "self"}), engine=engine)
    try:
        for example in examples:
            task, conversation = tasks[example.task_id], example.prompt[:-1]
            attempt = conversation[-1]["content"]
            turn = sum(m["role"] == "assistant" for m in conversation)
            teacher.critique(
                [CritiqueRequest(task, conversation, attempt, verify(task, attempt), turn)]
            )
    finally:
        engine.close()
    assert engine.conversations == [example.prompt for example in examples]


def test_self_critique_messages_append_the_filled_in_request() -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Calculate 4 + 5."},
        {"role": "assistant", "content": "Answer: 8"},
    ]
    template = "Problem: {prompt} Attempt: {attempt}. What is wrong?"
    assert self_critique_messages(conversation, template) == [
        *conversation,
        {"role": "user", "content": "Problem: Calculate 4 + 5. Attempt: Answer: 8. What is wrong?"},
    ]
    with pytest.raises(ValueError, match="ends with an attempt"):
        self_critique_messages(conversation[:2], template)


def test_loss_falls_on_the_targets_only(rolled_out, tmp_path: Path) -> None:
    _, cfg, episodes, tasks = rolled_out
    examples = build_examples(cfg, episodes, tasks)
    trainer = build_critic_trainer(cfg, examples, cfg.train.rl2f_dir, tmp_path, ["none"])
    tokenizer = trainer.processing_class
    for example, row in zip(examples, trainer.train_dataset, strict=True):
        trained = [
            t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
        ]
        assert tokenizer.decode(trained, skip_special_tokens=True).strip() == (
            example.completion[0]["content"].strip()
        )
        assert tokenizer.eos_token_id in trained  # it learns to stop


def test_distill_stage_publishes_a_model_that_loads_and_generates(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl2f.stages import distill

    cfg = rolled_out_workspace(tmp_path, coin_model_dir, "distill.steps=2")
    summary = distill.run(cfg)
    out = Path(cfg.distill.out_dir)
    assert summary["steps"] == 2 and summary["resumed_from"] is None
    assert summary["examples"]["critique"] > 0
    assert json.loads((out / "distill_summary.json").read_text())["steps"] == 2
    assert not checkpoint_dir(str(out)).exists()

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    before = AutoModelForCausalLM.from_pretrained(cfg.train.rl2f_dir).state_dict()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    request = self_critique_messages(
        [
            {"role": "user", "content": sum_tasks()[0].prompt},
            {"role": "assistant", "content": "Answer: 8"},
        ],
        cfg.teacher.self_prompt_template,
    )
    inputs = tokenizer.apply_chat_template(
        request, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.slow
def test_distill_resumes_after_kill_9_to_the_uninterrupted_weights(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    steps = 40

    def overrides(root: Path) -> list[str]:
        return [
            *workspace_overrides(root, coin_model_dir),
            *ROLLOUT,
            f"distill.steps={steps}",
            "distill.save_steps=1",
            "distill.batch_size=2",
        ]

    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    for root in (interrupted, straight):
        root.mkdir()
        rolled_out_workspace(root, coin_model_dir, *overrides(root))
    out = interrupted / "models" / "rl2f_critic"
    work = checkpoint_dir(str(out))
    command = cli_command("distill", overrides(interrupted))
    kill_after_first_checkpoint(command, interrupted, work)
    assert not out.exists(), "the run finished before it could be interrupted"
    left = {path.name for path in work.glob("checkpoint-*")}

    run_cli(command, interrupted)
    summary = json.loads((out / "distill_summary.json").read_text())
    assert summary["resumed_from"] is not None and Path(summary["resumed_from"]).name in left
    assert summary["steps"] == steps
    assert not work.exists()

    run_cli(cli_command("distill", overrides(straight)), straight)
    assert_same_weights(out, straight / "models" / "rl2f_critic")
