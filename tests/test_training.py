"""GRPO training stages (train_rl2f, train_single_turn) on the ci profile, with TRL's real
trainer, the real rollout loop and the oracle teacher. See training_helpers for the policy."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from training_helpers import (
    assert_same_weights,
    cli_command,
    kill_after_first_checkpoint,
    make_workspace,
    run_cli,
    shared_coin_policy,
    sum_tasks,
    workspace_overrides,
)

from rl2f.config import Config, ConfigError
from rl2f.episodes import Episode, Turn
from rl2f.errors import UserError
from rl2f.training.checkpoints import (
    RESUME_KEY,
    TRAINER_STATE,
    checkpoint_dir,
    resumable_checkpoint,
)
from rl2f.training.grpo import (
    ADVANTAGE_EPSILON,
    build_trainer,
    conversation_reward,
    edit_direction,
    per_turn_advantages,
    run_specs,
    teacher_level,
    token_turn_index,
    turn_returns,
)
from rl2f.training.models import load_student

torch.set_num_threads(1)

GAMMA = 0.7


@pytest.fixture(scope="session")
def coin_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return shared_coin_policy(tmp_path_factory.getbasetemp(), tiny_model_dir)


def ci_config(root: Path, model_dir: Path, *overrides: str) -> Config:
    base = [f"rollout.gamma={GAMMA}", "train.tasks_per_step=2", "train.num_generations=4"]
    return make_workspace(root, model_dir, sum_tasks(), [*base, *overrides])


def one_batch(trainer, rollout, cfg: Config, spec_name: str):  # noqa: ANN001, ANN201
    """One generation batch exactly as the training loop builds it: the first prompts of the
    dataset, each repeated G times (TRL's RepeatSampler layout)."""
    spec = run_specs(cfg)[spec_name]
    prompts = trainer.train_dataset["prompt"][: cfg.train.tasks_per_step]
    inputs = [{"prompt": prompt} for prompt in prompts for _ in range(spec.num_generations)]
    trainer.model.train()
    return trainer._generate_and_score_completions(inputs)


@pytest.fixture(scope="module")
def rl2f_batch(tmp_path_factory: pytest.TempPathFactory, coin_model_dir: Path):
    """A GRPO trainer for the RL2F run and one scored batch of 2 tasks x 4 conversations of up
    to 3 turns."""
    root = tmp_path_factory.mktemp("rl2f_batch")
    # The paper's conversation-level reward over the whole conversation (params.yaml ships
    # per-turn credit and a frozen first attempt; the test below and tests/test_revision.py
    # cover those paths).
    cfg = ci_config(
        root,
        coin_model_dir,
        "train.max_turns=3",
        "train.per_turn_credit=false",
        "train.frozen_first_attempt=false",
    )
    spec = run_specs(cfg)["rl2f"]
    trainer, rollout = build_trainer(cfg, spec, sum_tasks(), report_to=["none"])
    torch.manual_seed(0)
    batch = one_batch(trainer, rollout, cfg, "rl2f")
    return cfg, trainer, rollout, batch


# ---------------------------------------------------------------- rewards and advantages
def test_conversation_reward_is_discounted_by_the_turn_it_was_solved_at(rl2f_batch) -> None:
    cfg, _, rollout, _ = rl2f_batch
    episodes = rollout.last_episodes
    for episode in episodes:
        expected = 0.0 if episode.solved_at is None else GAMMA ** (episode.solved_at - 1)
        assert episode.reward == pytest.approx(expected)
        if episode.solved_at is not None:
            assert episode.student_turns[episode.solved_at - 1].correct
    rewards = conversation_reward([None] * len(episodes), [e.reward for e in episodes])
    assert rewards == [e.reward for e in episodes]
    # The coin policy solves some conversations at turn 1, some after feedback, some never.
    solved_at = {e.solved_at for e in episodes}
    assert 1 in solved_at and None in solved_at and solved_at & {2, 3}, solved_at


def test_group_advantages_match_a_hand_computation(rl2f_batch) -> None:
    cfg, trainer, rollout, batch = rl2f_batch
    g = cfg.train.num_generations
    rewards = [e.reward for e in rollout.last_episodes]
    expected = []
    for start in range(0, len(rewards), g):
        group = rewards[start : start + g]
        mean, std = statistics.fmean(group), statistics.stdev(group)  # TRL: sample std
        expected += [(r - mean) / (std + ADVANTAGE_EPSILON) for r in group]
    assert batch["advantages"].tolist() == pytest.approx(expected, abs=1e-5)
    assert any(abs(a) > 0.1 for a in expected), "no group mixed solved and unsolved episodes"


def test_rollout_hands_trl_the_whole_conversation_with_teacher_tokens_masked(rl2f_batch) -> None:
    _, trainer, rollout, batch = rl2f_batch
    completion_mask, env_mask = batch["completion_mask"], batch["tool_mask"]
    for row, episode in enumerate(rollout.last_episodes):
        n = len(episode.completion_ids)
        assert batch["completion_ids"][row, :n].tolist() == episode.completion_ids
        assert completion_mask[row].tolist() == [1] * n + [0] * (completion_mask.shape[1] - n)
        assert env_mask[row, :n].tolist() == [
            int(turn.role == "student") for turn in episode.turns for _ in turn.token_ids
        ]
        prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()].tolist()
        assert prompt == episode.prompt_ids
    assert (env_mask * completion_mask == 0).any(), "no conversation had a teacher turn"


def test_sampling_logprobs_match_the_trainers_logprobs_on_student_tokens(rl2f_batch) -> None:
    """The rollout's environment tokens are exactly what the student saw: the trainer,
    re-scoring the flat conversation in one forward pass, gets the log-probabilities the
    student sampled with, turn after turn."""
    _, trainer, _, batch = rl2f_batch
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    width = batch["completion_ids"].shape[1]
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width)
    student = (batch["completion_mask"] * batch["tool_mask"]).bool()
    sampled = batch["sampling_per_token_logps"]
    assert torch.allclose(logps[student], sampled[student], atol=1e-4)


def test_teacher_tokens_get_exactly_zero_gradient(rl2f_batch) -> None:
    """Through TRL's own loss: the gradient reaching the hidden state that predicts each
    completion token is exactly zero for teacher tokens and non-zero for the student tokens of
    conversations with a non-zero advantage."""
    _, trainer, _, batch = rl2f_batch
    captured: dict[str, torch.Tensor] = {}

    def keep_hidden(module, args, output) -> None:  # noqa: ANN001
        output.last_hidden_state.retain_grad()
        captured["hidden"] = output.last_hidden_state

    handle = trainer.model.model.register_forward_hook(keep_hidden)
    try:
        trainer.model.zero_grad()
        trainer.current_gradient_accumulation_steps = 1  # what the training loop sets
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    finally:
        handle.remove()
    prompt_width = batch["prompt_ids"].shape[1]
    width = batch["completion_ids"].shape[1]
    # The hidden state at position p predicts token p + 1.
    grad = captured["hidden"].grad[:, prompt_width - 1 : prompt_width - 1 + width]
    per_token = grad.abs().sum(dim=-1)
    real = batch["completion_mask"].bool()
    teacher = real & ~batch["tool_mask"].bool()
    student = real & batch["tool_mask"].bool()
    assert teacher.sum() > 0
    assert torch.all(per_token[teacher] == 0)
    assert torch.all(per_token[~real] == 0)
    moving = batch["advantages"].abs() > 0
    assert moving.any()
    assert torch.all(per_token[student & moving[:, None]] > 0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())
    trainer.model.zero_grad()


def _turn(role: str, tokens: int, correct: bool | None = None) -> Turn:
    return Turn(role=role, text=role, token_ids=list(range(tokens)), correct=correct)


def _episode(turns: list[Turn], solved_at: int | None, group: int) -> Episode:
    reward = 0.0 if solved_at is None else 0.5 ** (solved_at - 1)
    return Episode("t", "math", "train", "rl2f", "oracle", group, [1], turns, solved_at, reward)


def test_per_turn_credit_matches_a_hand_computation() -> None:
    gamma = 0.5
    fixed = _episode(  # wrong, critique, right: returns (gamma, 1)
        [_turn("student", 2, False), _turn("teacher", 3), _turn("student", 2, True)], 2, 0
    )
    first = _episode([_turn("student", 3, True)], 1, 1)  # right at once: returns (1,)
    never = _episode(  # wrong twice: returns (0, 0)
        [_turn("student", 1, False), _turn("teacher", 2), _turn("student", 2, False)], None, 2
    )
    assert turn_returns(fixed, gamma) == [0.5, 1.0]
    assert turn_returns(first, gamma) == [1.0]
    assert turn_returns(never, gamma) == [0.0, 0.0]
    assert token_turn_index(fixed) == [0, 0, 1, 1, 1, 1, 1]
    assert token_turn_index(never) == [0, 1, 1, 1, 1]

    advantages = per_turn_advantages([fixed, first, never], gamma, num_generations=3, width=8)
    eps = ADVANTAGE_EPSILON
    # Turn 1, all three episodes: returns (0.5, 1, 0), mean 0.5, sample std 0.5.
    t1 = {"fixed": 0.0, "first": 0.5 / (0.5 + eps), "never": -0.5 / (0.5 + eps)}
    # Turn 2, the two episodes that reached it: returns (1, 0), mean 0.5, sample std sqrt(0.5).
    t2 = {"fixed": 0.5 / (math.sqrt(0.5) + eps), "never": -0.5 / (math.sqrt(0.5) + eps)}
    expected = [
        [t1["fixed"]] * 2 + [0.0] * 3 + [t2["fixed"]] * 2 + [0.0],
        [t1["first"]] * 3 + [0.0] * 5,
        [t1["never"]] + [0.0] * 2 + [t2["never"]] * 2 + [0.0] * 3,
    ]
    assert advantages.tolist() == [pytest.approx(row, abs=1e-6) for row in expected]
    # The early wrong turn that was fixed is not rewarded like the fix.
    assert advantages[0, 0] < advantages[0, 5]


def _attempt(error: float | None) -> Turn:
    correct = error == 0
    return Turn(
        role="student",
        text="a",
        token_ids=[1],
        correct=correct,
        diagnostics={"numeric_error": error},
    )


def test_progress_reward_pays_a_wrong_attempt_for_moving_towards_the_answer() -> None:
    """With a progress weight, a wrong attempt after a wrong one earns +w when nearer the
    correct value, -w when farther or no longer a number; a right one earns its plain return."""
    critique = _turn("teacher", 1)
    closer = _episode([_attempt(7), critique, _attempt(-2), critique, _attempt(0)], 3, 0)
    farther = _episode([_attempt(3), critique, _attempt(-5), critique, _attempt(None)], None, 1)
    assert turn_returns(closer, 0.0, progress=0.25) == [0.0, 0.25, 1.0]
    assert turn_returns(farther, 0.0, progress=0.25) == [0.0, -0.25, -0.25]
    assert turn_returns(closer, 0.0) == [0.0, 0.0, 1.0], "no progress term unless asked"
    same = _episode([_attempt(4), critique, _attempt(-4)], None, 2)
    assert turn_returns(same, 0.5, progress=0.25) == [0.0, 0.0]


def _said(text: str, error: float | None, extracted: str | None) -> Turn:
    return Turn(
        role="student",
        text=text,
        token_ids=[1],
        correct=error == 0,
        extracted=extracted,
        diagnostics={"numeric_error": error},
    )


def test_edit_reward_pays_the_direction_of_an_edit_of_the_last_answer() -> None:
    """-76 is 3 too high: "-76 - 3 = ..." goes the answer's way (+1) whatever the amount,
    "-76 + 1 = ..." the other way (-1); an edit of another number, a fresh solution and an
    edit after a right answer earn nothing."""
    too_high = _said("Answer: -76", 3, "-76")
    assert edit_direction(too_high, _said("-76 - 3 = -79\nAnswer: -79", 0, "-79")) == 1
    assert edit_direction(too_high, _said("-76 - 5 = -81\nAnswer: -81", -2, "-81")) == 1
    assert edit_direction(too_high, _said("-76 + 1 = -75\nAnswer: -75", 4, "-75")) == -1
    assert edit_direction(too_high, _said("-70 - 9 = -79\nAnswer: -79", 0, "-79")) == 0
    assert edit_direction(too_high, _said("-40 - 39 = -79\nAnswer: -79", 0, "-79")) == 0
    too_low = _said("Answer: 12", -2, "12")
    assert edit_direction(too_low, _said("12 + 2 = 14\nAnswer: 14", 0, "14")) == 1
    assert edit_direction(_said("Answer: 9", 0, "9"), _said("9 - 1 = 8", -1, "8")) == 0

    critique = _turn("teacher", 1)
    turns = [too_high, critique, _said("-76 + 1 = -75", 4, "-75")]
    episode = _episode([*turns, critique, _said("-75 - 4 = -79", 0, "-79")], 3, 0)
    assert turn_returns(episode, 0.0, edit=0.5) == [0.0, -0.5, 1.5]
    assert turn_returns(episode, 0.0) == [0.0, 0.0, 1.0], "no edit term unless asked"


def test_per_turn_credit_trainer_puts_turn_advantages_into_trls_loss(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    cfg = ci_config(tmp_path, coin_model_dir, "train.max_turns=3", "train.per_turn_credit=true")
    trainer, rollout = build_trainer(cfg, run_specs(cfg)["rl2f"], sum_tasks(), ["none"])
    assert type(trainer).__name__ == "PerTurnCreditGRPOTrainer"
    batch = one_batch(trainer, rollout, cfg, "rl2f")
    width = batch["completion_ids"].shape[1]
    expected = per_turn_advantages(
        rollout.last_episodes,
        cfg.train.credit_discount,
        4,
        width,
        progress=cfg.train.progress_reward,
        positive_only_after_first=cfg.train.later_turns_positive_only,
    )
    assert batch["advantages"].shape == (8, width)
    assert torch.equal(batch["advantages"], expected)
    assert expected.abs().sum() > 0
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(trainer.model, batch)
    assert torch.isfinite(loss)


def test_fading_teacher_schedule(tmp_path: Path, coin_model_dir: Path) -> None:
    fixed = ci_config(tmp_path, coin_model_dir, "teacher.level=directional")
    assert [teacher_level(fixed, p) for p in (0.0, 0.5, 0.99)] == ["directional"] * 3
    fading = ci_config(tmp_path, coin_model_dir, "train.fading_teacher=true")
    levels = [teacher_level(fading, p) for p in (0.0, 0.3, 0.34, 0.66, 0.67, 1.0)]
    assert levels == ["diagnostic"] * 2 + ["directional"] * 2 + ["binary"] * 2


# ---------------------------------------------------------------- the single-turn baseline
def test_single_turn_baseline_samples_g_times_t_max_single_turn_replies(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    cfg = ci_config(tmp_path, coin_model_dir, "train.max_turns=3")
    spec = run_specs(cfg)["single_turn"]
    assert (spec.max_turns, spec.num_generations) == (1, 4 * 3)
    unmatched = ci_config(tmp_path, coin_model_dir, "train.single_turn_match_budget=false")
    assert run_specs(unmatched)["single_turn"].num_generations == 4

    trainer, rollout = build_trainer(cfg, spec, sum_tasks(), ["none"])
    assert trainer.num_generations == 12
    assert trainer.args.per_device_train_batch_size == 2 * 12
    batch = one_batch(trainer, rollout, cfg, "single_turn")
    episodes = rollout.last_episodes
    assert len(episodes) == 24
    assert all(len(e.turns) == 1 and e.turns[0].role == "student" for e in episodes)
    assert torch.all(batch["tool_mask"] == 1)
    groups = [{e.task_id for e in episodes[start : start + 12]} for start in (0, 12)]
    assert all(len(group) == 1 for group in groups) and groups[0] != groups[1]


def test_single_turn_learning_rate_reaches_only_the_baselines_optimizer(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    cfg = ci_config(
        tmp_path,
        coin_model_dir,
        "train.learning_rate=0.0003",
        "train.single_turn_learning_rate=0.0001",
    )
    specs = run_specs(cfg)
    assert (specs["rl2f"].learning_rate, specs["single_turn"].learning_rate) == (3e-4, 1e-4)
    trainer, _ = build_trainer(cfg, specs["single_turn"], sum_tasks(), ["none"])
    assert trainer.args.learning_rate == 1e-4
    trainer.create_optimizer()
    assert {group["lr"] for group in trainer.optimizer.param_groups} == {1e-4}
    unset = ci_config(tmp_path, coin_model_dir, "train.single_turn_learning_rate=null")
    assert run_specs(unset)["single_turn"].learning_rate == unset.train.learning_rate
    with pytest.raises(
        ConfigError, match="train.single_turn_learning_rate: Input should be greater than 0"
    ):
        ci_config(tmp_path, coin_model_dir, "train.single_turn_learning_rate=0")


# ---------------------------------------------------------------- the stage, end to end
def test_train_rl2f_changes_the_weights_and_publishes_a_loadable_model(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl2f.stages.train import run_training

    cfg = ci_config(tmp_path, coin_model_dir, "train.steps=1", "train.learning_rate=0.001")
    summary = run_training(cfg, "rl2f")
    out = Path(cfg.train.rl2f_dir)
    assert summary["steps"] == 1 and summary["resumed_from"] is None
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 1
    assert not checkpoint_dir(str(out)).exists(), "checkpoints are removed once published"

    before = AutoModelForCausalLM.from_pretrained(coin_model_dir).state_dict()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    after = model.state_dict()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "one GRPO step left every weight as it was"

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": sum_tasks()[0].prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    assert tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :]).strip()


def test_a_tokenizer_without_chat_template_is_a_user_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = tmp_path / "plain_model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(plain)
    assert not AutoTokenizer.from_pretrained(plain).chat_template
    cfg = ci_config(tmp_path, plain)
    with pytest.raises(UserError, match="no chat template"):
        load_student(cfg)


def test_a_missing_base_model_is_a_user_error(tmp_path: Path) -> None:
    cfg = ci_config(tmp_path, tmp_path / "nowhere")
    with pytest.raises(UserError, match="nowhere"):
        load_student(cfg)


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path: Path) -> None:
    work = tmp_path / "rl2f.checkpoints"
    assert resumable_checkpoint(work, {"lr": 1}) is None
    checkpoint = work / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / TRAINER_STATE).write_text("{}")
    (work / "checkpoint-4").mkdir()  # killed while saving: no trainer state
    assert resumable_checkpoint(work, {"lr": 1}) == checkpoint
    assert not (work / "checkpoint-4").exists()
    assert resumable_checkpoint(work, {"lr": 2}) is None
    assert not checkpoint.exists() and (work / RESUME_KEY).is_file()


# ---------------------------------------------------------------- resume and tracking
@pytest.mark.slow
def test_train_rl2f_resumes_after_kill_9_to_the_uninterrupted_weights(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    """Killed after its first checkpoint and rerun, the stage resumes there and publishes the
    very weights of a run that was never interrupted: resuming restores the optimizer, the
    scheduler, the RNG states and the data order, and each step's rollout seed depends on the
    step alone."""
    steps = 3

    def overrides(root: Path) -> list[str]:
        return [
            *workspace_overrides(root, coin_model_dir),
            f"train.steps={steps}",
            "train.save_steps=1",
        ]

    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    for root in (interrupted, straight):
        root.mkdir()
        make_workspace(root, coin_model_dir, sum_tasks(), overrides(root))
    out = interrupted / "models" / "rl2f"
    work = checkpoint_dir(str(out))
    command = cli_command("train_rl2f", overrides(interrupted))
    kill_after_first_checkpoint(command, interrupted, work)
    assert not out.exists(), "the run finished before it could be interrupted"
    left = sorted(work.glob("checkpoint-*"))

    run_cli(command, interrupted)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from"] is not None
    assert Path(summary["resumed_from"]).name in {path.name for path in left}
    assert summary["steps"] == steps
    assert not work.exists()

    run_cli(cli_command("train_rl2f", overrides(straight)), straight)
    assert_same_weights(out, straight / "models" / "rl2f")


@pytest.mark.slow
def test_stage_logs_trl_and_rollout_metrics_to_its_mlflow_run(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    import mlflow

    from rl2f.stages import STAGES
    from rl2f.tracking import TAG_STAGE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = ci_config(
        tmp_path,
        coin_model_dir,
        "train.steps=1",
        "tracking.enabled=true",
        f"tracking.tracking_uri={uri}",
        "tracking.experiment=train-test",
    )
    STAGES["train_single_turn"].run(cfg)

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("train-test")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_STAGE}` = 'train_single_turn'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags.get("mlflow.parentRunId")
    metrics = run.data.metrics
    for name in ("loss", "reward", "rollout/acc_turn_1", "rollout/seconds", "steps"):
        assert name in metrics, sorted(metrics)
    assert "rollout/acc_turn_2" not in metrics  # one turn in the single-turn baseline
    assert run.data.params["train.steps"] == "1"
    # The model is logged with the transformers flavour (rl2f.tracking.log_model).
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/MLmodel" in artifacts, artifacts


def test_lora_run_publishes_a_merged_model(tmp_path: Path, coin_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rl2f.stages.train import run_training

    cfg = ci_config(
        tmp_path, coin_model_dir, "train.steps=1", "train.lora=true", "train.learning_rate=0.01"
    )
    assert run_training(cfg, "rl2f")["steps"] == 1
    out = Path(cfg.train.rl2f_dir)
    assert not (out / "adapter_config.json").exists()
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    before = AutoModelForCausalLM.from_pretrained(coin_model_dir).state_dict()
    assert trained.keys() == before.keys()
    assert any(not torch.equal(before[name], trained[name]) for name in before)


# ---------------------------------------------------------------- vLLM rollouts (GPU only)
def test_vllm_rollouts_without_a_gpu_say_so(tmp_path: Path, coin_model_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the GPU test below covers vLLM rollouts")
    cfg = ci_config(tmp_path, coin_model_dir, "train.use_vllm=true")
    with pytest.raises(UserError, match="train.use_vllm: vLLM generation needs a CUDA GPU"):
        build_trainer(cfg, run_specs(cfg)["rl2f"], sum_tasks(), report_to=["none"])


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
    reason="needs a CUDA device and vLLM",
)
def test_train_rl2f_rolls_out_with_colocated_vllm(tmp_path: Path) -> None:
    """TRL's colocated vLLM samples the conversations (through our engine contract) and gets the
    policy's weights after each step: the log-probabilities it reports for its samples are the
    trained policy's, not the base's."""
    from transformers import AutoModelForCausalLM

    from rl2f.config import SamplingConfig, TinyModelConfig
    from rl2f.engines.vllm_engine import VLLMEngine
    from rl2f.rollout import ChatTurns
    from rl2f.training.tiny_model import build_model, train_tokenizer

    # A head size of 64, which every vLLM attention backend supports.
    model_cfg = TinyModelConfig(
        vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    corpus = [task.prompt + " Answer: " + task.answer for task in sum_tasks()] * 20
    tokenizer = train_tokenizer(corpus, model_cfg.vocab_size)
    torch.manual_seed(0)
    model_dir = tmp_path / "base"
    build_model(model_cfg, tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    cfg = ci_config(
        tmp_path, model_dir, "train.use_vllm=true", "train.steps=2", "train.learning_rate=0.01"
    )
    spec = run_specs(cfg)["rl2f"]
    trainer, rollout = build_trainer(cfg, spec, sum_tasks(), report_to=["none"])
    assert isinstance(rollout.student_engine(trainer), VLLMEngine)
    trainer.train()
    assert rollout.student_tokens > 0
    trainer.vllm_generation.sync_weights()  # what TRL does before the next step's rollout
    chat = ChatTurns(tokenizer)
    prompts = [chat.prompt_ids([{"role": "user", "content": t.prompt}]) for t in sum_tasks()[:4]]
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=3)
    sampled = rollout.student_engine(trainer).generate(prompts, sampling, return_logprobs=True)
    base = AutoModelForCausalLM.from_pretrained(model_dir).to(trainer.model.device)

    def logprobs(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:  # noqa: ANN001
        ids = torch.tensor([prompt + tokens], device=model.device)
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
        return logits.log_softmax(-1).cpu()[torch.arange(len(tokens)), tokens]

    for prompt, generation in zip(prompts, sampled, strict=True):
        from_vllm = torch.tensor(generation.logprobs)
        # vLLM samples from the trained policy, not from the base it was built from (up to
        # vLLM running in half precision; two steps at lr 0.01 move a random tiny model far).
        trained = logprobs(trainer.model, prompt, generation.token_ids)
        assert torch.allclose(from_vllm, trained, atol=0.1)
        assert (logprobs(base, prompt, generation.token_ids) - trained).abs().max() > 0.5
