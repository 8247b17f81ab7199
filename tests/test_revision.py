"""A revision-trained student: the frozen base writes each first attempt, the trained model every
attempt after feedback (``train.frozen_first_attempt``, :mod:`rl2f.engines.revision`). Real
models throughout: the untrained tiny model as the frozen one, the coin policy as the trained
one (they share a tokenizer and answer differently, so a routing mistake shows)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import make_workspace, shared_coin_policy, sum_tasks

from rl2f.config import EngineConfig, SamplingConfig
from rl2f.engines import make_engine
from rl2f.engines.revision import FIRST_ATTEMPT_DIR, RevisionEngine
from rl2f.engines.transformers_engine import TransformersEngine, render_chat
from rl2f.errors import UserError
from rl2f.rollout import RolloutSettings, run_episodes
from rl2f.teachers import OracleTeacher
from rl2f.training.grpo import build_trainer, run_specs

torch.set_num_threads(1)

SAMPLED = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=3)
ENGINE = EngineConfig(kind="transformers", batch_size=4)


@pytest.fixture(scope="session")
def coin_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    return shared_coin_policy(tmp_path_factory.getbasetemp(), tiny_model_dir)


@pytest.fixture(scope="module")
def paired_dir(tmp_path_factory: pytest.TempPathFactory, coin_model_dir: Path, tiny_model_dir):
    """A published revision-trained model: the coin policy with the tiny model beside it."""
    out = tmp_path_factory.mktemp("paired") / "rl2f"
    shutil.copytree(coin_model_dir, out)
    shutil.copytree(tiny_model_dir, out / FIRST_ATTEMPT_DIR)
    return out


def _prompts(engine: TransformersEngine) -> list[list[int]]:
    return [
        render_chat(engine.tokenizer, [{"role": "user", "content": task.prompt}])
        for task in sum_tasks(5)
    ]


def test_a_session_sends_first_attempts_to_the_frozen_model_and_the_rest_to_the_trained_one(
    tiny_model_dir: Path, coin_model_dir: Path
) -> None:
    first = TransformersEngine(str(tiny_model_dir), batch_size=4)
    trained = TransformersEngine(str(coin_model_dir), batch_size=4)
    prompts, keys, seeds = _prompts(trained), list(range(5)), [11, 12, 13, 14, 15]
    feedback = trained.tokenizer(" Try again.")["input_ids"]
    session = RevisionEngine(first, trained).session()

    attempts = session.generate(prompts, SAMPLED, True, keys=keys, seeds=seeds)
    by_first = first.generate(prompts, SAMPLED, True, seeds=seeds)
    assert [g.token_ids for g in attempts] == [g.token_ids for g in by_first]
    by_trained = trained.generate(prompts, SAMPLED, True, seeds=seeds)
    assert [g.token_ids for g in by_first] != [g.token_ids for g in by_trained]

    # Turn 2 of three conversations (the others ended), and a conversation new to the session.
    later = [prompts[k] + attempts[k].token_ids + feedback for k in (0, 2, 4)]
    fresh = _prompts(trained)[1]
    asked, asked_keys, asked_seeds = [*later, fresh], [0, 2, 4, "new"], [21, 22, 23, 24]
    second = session.generate(asked, SAMPLED, True, keys=asked_keys, seeds=asked_seeds)
    revisions = trained.generate(later, SAMPLED, True, seeds=asked_seeds[:3])
    assert [g.token_ids for g in second[:3]] == [g.token_ids for g in revisions]
    new_one = first.generate([fresh], SAMPLED, True, seeds=[24])
    assert second[3].token_ids == new_one[0].token_ids
    session.close()


def test_make_engine_pairs_a_published_folder_with_its_first_attempt_model(
    paired_dir: Path, coin_model_dir: Path
) -> None:
    paired = make_engine(ENGINE, str(paired_dir))
    assert isinstance(paired, RevisionEngine)
    plain = make_engine(ENGINE, str(coin_model_dir))
    assert isinstance(plain, TransformersEngine)
    prompts = _prompts(plain)
    # Stateless calls (a self-critique, a probe) are the trained model's.
    assert [g.token_ids for g in paired.generate(prompts, SAMPLED)] == [
        g.token_ids for g in plain.generate(prompts, SAMPLED)
    ]
    paired.close()


def test_a_first_attempt_model_with_another_tokenizer_is_refused(
    tmp_path: Path, tiny_model_dir: Path, coin_model_dir: Path
) -> None:
    from rl2f.config import TinyModelConfig
    from rl2f.training.tiny_model import build_model, train_tokenizer

    other = tmp_path / "other"
    tokenizer = train_tokenizer([f"Compute {a} * {a}." for a in range(50)], 300)  # merges
    build_model(TinyModelConfig(vocab_size=300, hidden_size=16), tokenizer).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(UserError, match="tokenizer differs"):
        RevisionEngine(
            TransformersEngine(str(other)), TransformersEngine(str(coin_model_dir), batch_size=4)
        )


def test_rollouts_of_a_published_pair_take_first_attempts_from_the_frozen_model(
    paired_dir: Path, tiny_model_dir: Path
) -> None:
    """The same tasks and seeds: every first attempt is the frozen model's, word for word."""
    settings = RolloutSettings(
        sampling=SAMPLED,
        num_generations=2,
        max_turns=3,
        gamma=0.7,
        max_regenerations=2,
        fallback_message="Try again.",
        progress=False,
    )
    teacher = OracleTeacher("directional")
    runs = {}
    for name, source in {"pair": paired_dir, "frozen": tiny_model_dir}.items():
        engine = make_engine(ENGINE, str(source))
        runs[name] = run_episodes(sum_tasks(4), engine, teacher, settings, policy_name=name)
        engine.close()
    first_texts = {name: [e.turns[0].text for e in runs[name]] for name in runs}
    assert first_texts["pair"] == first_texts["frozen"]
    revised = [e for e in runs["pair"] if len(e.student_turns) > 1]
    assert revised and any("Answer" in e.student_turns[1].text for e in revised)


def test_frozen_first_attempt_training_masks_the_first_attempt_and_publishes_the_base(
    tmp_path: Path, coin_model_dir: Path
) -> None:
    from rl2f.stages.train import run_training

    cfg = make_workspace(
        tmp_path,
        coin_model_dir,
        sum_tasks(),
        ["train.frozen_first_attempt=true", "train.max_turns=3", "train.num_generations=4"],
    )
    spec = run_specs(cfg)["rl2f"]
    assert spec.frozen_first_attempt and not run_specs(cfg)["single_turn"].frozen_first_attempt
    trainer, rollout = build_trainer(cfg, spec, sum_tasks(), ["none"])
    prompts = trainer.train_dataset["prompt"][: cfg.train.tasks_per_step]
    inputs = [{"prompt": p} for p in prompts for _ in range(spec.num_generations)]
    batch = trainer._generate_and_score_completions(inputs)
    trained_tokens = 0
    for row, episode in enumerate(rollout.last_episodes):
        first = len(episode.turns[0].token_ids)
        mask = batch["tool_mask"][row, : len(episode.completion_ids)].tolist()
        assert mask[:first] == [0] * first, "the frozen model's first attempt carries loss"
        assert mask[first:] == episode.completion_mask[first:]
        trained_tokens += sum(mask)
    assert trained_tokens > 0, "no revision was trained"
    rollout.close()

    one_step = cfg.train.model_copy(update={"steps": 1})
    run_training(cfg.model_copy(update={"train": one_step}), "rl2f")
    published = Path(cfg.train.rl2f_dir) / FIRST_ATTEMPT_DIR
    frozen = load_file(published / "model.safetensors")
    for name, tensor in load_file(coin_model_dir / "model.safetensors").items():
        assert torch.equal(frozen[name], tensor), name
    assert isinstance(make_engine(ENGINE, cfg.train.rl2f_dir), RevisionEngine)


def test_distillation_keeps_a_revision_policy_paired(paired_dir: Path, tmp_path: Path) -> None:
    from rl2f.stages import distill, rollout

    cfg = make_workspace(
        tmp_path,
        paired_dir / FIRST_ATTEMPT_DIR,
        sum_tasks(),
        ["rollout.num_generations=4", "train.max_turns=3", "rollout.max_tasks=8"],
    )
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"steps": 1})})
    shutil.copytree(paired_dir, cfg.train.rl2f_dir)
    rollout.write_outputs(cfg.distill.episodes_dir, *rollout.roll_out(cfg, progress=False))
    distill.run(cfg)
    kept = Path(cfg.distill.out_dir) / FIRST_ATTEMPT_DIR
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        p.name for p in (paired_dir / FIRST_ATTEMPT_DIR).iterdir()
    )
    assert isinstance(make_engine(ENGINE, cfg.distill.out_dir), RevisionEngine)
