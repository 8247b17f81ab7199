"""Typed view of ``params.yaml``.

Every knob of every stage lives in one YAML file so DVC can track it. The models here forbid
unknown keys: a typo in params.yaml must fail loudly, naming the key path, instead of silently
running with a default.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rl2f.errors import decode_utf8, one_line

PROFILE_ENV = "RL2F_PROFILE"
PROFILES_DIR = "profiles"


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message is one line for the user."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- data
class SourceConfig(Strict):
    """One task source. ``kind`` picks the loader; the other fields are the loader's."""

    kind: Literal["reasoning_gym", "humaneval", "file", "huggingface"] = Field(
        description="the loader: a reasoning_gym generator, HumanEval, a local JSONL/CSV/Parquet "
        "file, or a Hugging Face dataset"
    )
    name: str = Field(description="generator name, file path or dataset id")
    domain: Literal["math", "puzzle", "maze", "code"] | None = Field(
        default=None, description="overrides the domain the source would infer"
    )
    size: int = Field(
        default=100,
        ge=1,
        description="tasks drawn from the source (generated, or the first rows read); raise it "
        "for more training or evaluation tasks",
    )
    seed: int = Field(
        default=0, description="generator seed: give two sources of one generator different seeds"
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="generator kwargs (reasoning_gym: e.g. min_terms, max_digits); sets difficulty",
    )
    splits: list[Literal["train", "eval_id", "eval_ood"]] = Field(
        default_factory=lambda: ["train"],
        description="the splits its tasks may go to; [train, eval_id] is split by "
        "data.eval_fraction, [eval_ood] keeps the source out of training",
    )
    eval_split: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]+$",
        description="for eval_ood sources: the evaluation split these tasks form, reported as "
        "ood_<eval_split> (default: ood_<domain>); lets two math variants be told apart",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="file / huggingface sources: which column holds what, task field -> column "
        "(e.g. {prompt: problem}); unmapped fields are read from the column of the same name",
    )
    subset: str | None = Field(
        default=None, description="huggingface sources: the dataset's configuration (subset) name"
    )
    hf_split: str = Field(
        default="train", description="huggingface sources: the dataset split to read the rows from"
    )


class DataConfig(Strict):
    out_dir: str = Field(
        default="data/tasks",
        description="where `rl2f prepare` writes {train,eval_id,eval_ood}.parquet and later "
        "stages read them; a DVC out, so change dvc.yaml with it",
    )
    eval_fraction: float = Field(
        default=0.2,
        ge=0.0,
        lt=1.0,
        description="share (0..1) of the tasks of [train, eval_id] sources held out as eval_id, "
        "chosen by a hash of the prompt so a task never moves between splits",
    )
    seed: int = Field(
        default=0, description="salt of that hash: another seed draws another train/eval_id split"
    )
    sources: list[SourceConfig] = Field(
        min_length=1, description="the task sources, in order; at least one"
    )
    validation_dir: str = Field(
        default="reports", description="where `rl2f validate` writes validation.json and .html"
    )


# ---------------------------------------------------------------- model
class TinyModelConfig(Strict):
    """The tiny student the bootstrap stage builds and SFTs when ``model.student`` is null."""

    vocab_size: int = Field(
        default=256,
        ge=64,
        description="tokenizer size: the corpus's symbols, special tokens and BPE merges",
    )
    hidden_size: int = Field(default=128, ge=16, description="model width (residual stream)")
    intermediate_size: int = Field(default=384, ge=16, description="MLP hidden width")
    num_hidden_layers: int = Field(default=4, ge=1, description="transformer layers")
    num_attention_heads: int = Field(
        default=4, ge=1, description="query heads; must divide hidden_size"
    )
    num_key_value_heads: int = Field(
        default=4, ge=1, description="key/value heads (grouped-query attention when fewer)"
    )
    max_position_embeddings: int = Field(
        default=1024,
        ge=64,
        description="longest conversation in tokens; raise it for more turns or longer replies",
    )
    sft_steps: int = Field(
        default=600, ge=0, description="supervised optimizer steps on the bootstrap corpus"
    )
    sft_batch_size: int = Field(default=32, ge=1, description="conversations per SFT step")
    sft_learning_rate: float = Field(default=3e-3, gt=0, description="peak SFT learning rate")
    sft_warmup_ratio: float = Field(
        default=0.05, ge=0, le=1, description="share of sft_steps warming up (cosine schedule)"
    )
    sft_save_steps: int = Field(default=100, ge=1, description="checkpoint interval (resume)")
    questions_per_conversation: int = Field(
        default=2,
        ge=1,
        description="at most this many independent questions per corpus conversation, so the "
        "base learns that a new user turn can follow an answer",
    )
    retry_rate: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="share of corpus questions first answered by a near miss, nudged without "
        "information and then answered right: the base learns to try again, not to read feedback",
    )
    edit_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="share of the nudged near misses whose correct reply is an edit of the "
        "wrong answer ('-76 - 1 = -77') instead of a fresh solution: a base that revises by "
        "editing, which RL can teach to edit the way a critique points (train.edit_reward); "
        "it cost first-turn accuracy on the dev splits of docs/experiments.md's tenth and "
        "eleventh rounds",
    )
    filler_nudge_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="share of the nudges replaced by 1-3 sentences of random words with no "
        "feedback word among them, so the base meets any unseen user text after a wrong answer "
        "(a critique) with another attempt instead of derailing",
    )
    seed: int = Field(default=0, description="initial weights, corpus and SFT order")


class ModelConfig(Strict):
    student: str | None = Field(
        default=None, description="hub id or local path; None means the tiny bootstrapped model"
    )
    base_dir: str = Field(
        default="models/base",
        description="where bootstrap writes the tiny model (a DVC out); unused when student is set",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="weights' dtype when loading the student; bfloat16 halves GPU memory",
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig, description="the bootstrapped tiny model's shape and SFT"
    )
    cpu_threads: int = Field(
        default=0,
        ge=0,
        description="torch's CPU threads in every stage that runs a model; 0 takes torch's "
        "default (every core the process may use). Threads split sums, so the count changes "
        "the trained weights: with 0 the numbers depend on the machine's core count. 1 repeats "
        "a run to the last digit on any machine (two threads did not: on one core and on two "
        "they trained different models), at 2.3x the training time on 2 cores. No effect on a GPU.",
    )

    @property
    def base_path(self) -> str:
        return self.student or self.base_dir


# ---------------------------------------------------------------- generation
class SamplingConfig(Strict):
    temperature: float = Field(
        default=1.0, ge=0.0, description="softmax temperature; 0 is greedy decoding"
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, description="nucleus sampling mass; 1 samples the whole vocab"
    )
    max_new_tokens: int = Field(
        default=48, ge=1, description="longest reply per turn, in tokens; raise for real models"
    )
    seed: int = Field(default=0, description="sampling seed: the same seed repeats the same text")


class EngineConfig(Strict):
    kind: Literal["transformers", "vllm", "openai"] = Field(
        default="transformers",
        description="generation backend: transformers (CPU or GPU), vllm (GPU, fast) or an "
        "OpenAI-compatible HTTP server (text only: teachers, not the rolled-out student)",
    )
    batch_size: int = Field(
        default=64, ge=1, description="prompts per generate call; lower it on out-of-memory"
    )
    device: str = Field(
        default="auto", description="torch device for transformers; auto = GPU when there is one"
    )
    base_url: str | None = Field(
        default=None, description="openai engine: the server's URL (e.g. http://host:8000/v1)"
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="openai engine: environment variable holding the API key (never the key)",
    )
    model: str | None = Field(
        default=None, description="openai engine: the model name the server expects"
    )
    timeout_s: float = Field(
        default=60.0, gt=0, description="openai engine: seconds to wait for one answer"
    )
    max_retries: int = Field(
        default=3, ge=0, description="openai engine: retries of a failed request"
    )
    concurrency: int = Field(
        default=8, ge=1, description="openai engine: requests in flight at once"
    )
    max_retry_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="openai engine: the longest wait before a retry, even when the server's "
        "Retry-After asks for more (a rate-limited run slows down but never stalls)",
    )
    backoff_s: float = Field(
        default=0.5,
        ge=0,
        description="openai engine: the first wait between retries without a Retry-After; it "
        "doubles each retry (with jitter), up to 8 s and never past max_retry_wait_s",
    )
    gpu_memory_utilization: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="vllm engine: share (0..1] of GPU memory vLLM may take; lower it when "
        "training shares the GPU",
    )


class RolloutConfig(Strict):
    """The rollout stage (episodes for distillation), plus the sampling, engine and reward
    discount that training and evaluation share with it. The policy, turn budget and output
    are ``train.rl2f_dir``, ``train.max_turns`` and ``distill.episodes_dir``: not repeated here,
    so they cannot drift apart (see rl2f.stages.rollout)."""

    num_generations: int = Field(
        default=8, ge=1, description="G episodes per task in the rollout stage"
    )
    gamma: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="per-turn discount: a conversation solved at turn t earns gamma^(t-1); "
        "training's reward and the episodes' reward both use it",
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        description="the student's sampling, in rollout, training, bootstrap probe and evaluation",
    )
    engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="the student's engine, in rollout, training (batch size) and evaluation",
    )
    split: Literal["train", "eval_id", "eval_ood"] = Field(
        default="train", description="the task split rolled out"
    )
    max_tasks: int | None = Field(
        default=None,
        ge=1,
        description="rolls out only the first this many tasks (null = all); more gives distill "
        "more critiques",
    )


class TeacherConfig(Strict):
    kind: Literal["oracle", "llm", "self", "retry"] = Field(
        default="oracle",
        description="who critiques a wrong answer: oracle (rules on the verifier's report, "
        "privileged), llm (a prompted model, privileged), self (the student, no privileged data) "
        "or retry (retry_message only)",
    )
    level: Literal["binary", "directional", "diagnostic"] = Field(
        default="diagnostic",
        description="oracle: how much a critique says: only wrong, which way (too high/low), or "
        "what exactly is wrong",
    )
    max_regenerations: int = Field(
        default=2,
        ge=0,
        description="a critique the leak guard rejects is regenerated up to this many times, "
        "then replaced by fallback_message",
    )
    retry_message: str = Field(
        default="That is not correct. Try again.",
        description="what the `retry` feedback mode says after a wrong answer (no information "
        'but "wrong")',
    )
    fallback_message: str = Field(
        default="That is not correct. Check your work step by step and try again.",
        description="sent when a critique still leaks after max_regenerations (counted as a "
        "fallback)",
    )
    model: str | None = Field(
        default=None, description="llm teacher: hub id, path or server model name"
    )
    judge_model: str | None = Field(
        default=None,
        description="a model asked whether each critique reveals the answer (the paper's LLM "
        "judge), after the string checks pass; a YES sends the critique back for regeneration. "
        "Hub id, path or server model name; null: string checks only",
    )
    judge_engine: EngineConfig = Field(
        default_factory=EngineConfig,
        description="the engine that runs judge_model (e.g. kind openai for a served model)",
    )
    engine: EngineConfig = Field(
        default_factory=EngineConfig, description="llm teacher: the engine that runs it"
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, max_new_tokens=128),
        description="llm teacher: its sampling (critiques are longer than answers)",
    )
    system_prompt: str = Field(
        default=(
            "You are a teacher. You know the correct answer, but you must never state it, "
            "nor any expression equal to it. Point out the mistake in the student's last answer "
            "and give a hint that helps the student find the answer themselves."
        ),
        description="llm teacher: its system message",
    )
    prompt_template: str = Field(
        default=(
            "Problem:\n{prompt}\n\nCorrect answer (secret, never reveal it): {answer}\n"
            "{solution_block}Verifier report: {diagnostics}\n\n"
            "Student's answer:\n{attempt}\n\nWrite a short critique."
        ),
        description="llm teacher: its user message; may name {prompt}, {answer}, "
        "{solution_block}, {diagnostics} and {attempt}",
    )
    self_prompt_template: str = Field(
        default="That answer is wrong. Say briefly what is wrong with it.",
        description="appended to the public conversation when the model critiques its own last "
        "attempt (the `self` teacher and critique distillation); may name {prompt} and {attempt}",
    )


# ---------------------------------------------------------------- training
class TrainConfig(Strict):
    """Both GRPO stages, train_rl2f (multi-turn with the teacher) and train_single_turn."""

    steps: int = Field(default=40, ge=1, description="GRPO optimizer steps")
    max_tasks: int | None = Field(default=None, ge=1, description="cap on training tasks")
    learning_rate: float = Field(
        default=1e-4, gt=0, description="peak learning rate; too high collapses a tiny policy"
    )
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        default="constant", description="learning-rate schedule after warmup"
    )
    warmup_ratio: float = Field(
        default=0.0, ge=0, le=1, description="share of steps warming up the learning rate"
    )
    tasks_per_step: int = Field(default=8, ge=1, description="distinct prompts per GRPO step")
    num_generations: int = Field(
        default=8,
        ge=2,
        description="G conversations per task (the GRPO group; single_turn: see "
        "single_turn_match_budget)",
    )
    max_turns: int = Field(
        default=4,
        ge=1,
        description="student attempts per training conversation; the rollout stage uses it too, "
        "so distilled episodes have the length the policy was trained on",
    )
    kl_beta: float = Field(
        default=0.0, ge=0, description="weight of the KL penalty to the base model; 0 turns it off"
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="gradient clipping norm")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        default="dapo", description="TRL's GRPO loss normalisation (see TRL's GRPOConfig)"
    )
    single_turn_match_budget: bool = Field(
        default=True, description="single-turn baseline samples G x T_max per task"
    )
    single_turn_learning_rate: float | None = Field(
        default=None,
        gt=0,
        description="the single-turn baseline's learning rate (null: learning_rate). Its "
        "policy writes every first attempt, so a rate chosen for an RL2F run whose first "
        "attempt is frozen can be too high for it",
    )
    per_turn_credit: bool = Field(
        default=False,
        description="each student turn's tokens get the group-normalised return from that "
        "turn (see credit_discount) instead of the conversation reward",
    )
    credit_discount: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="with per_turn_credit: a turn solved k turns later earns credit_discount^k; "
        "0 rewards a turn only for being right itself, so a wrong answer is never reinforced "
        "for the fix that the critique brought about",
    )
    progress_reward: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="with per_turn_credit: a wrong attempt after a wrong one earns +this when its "
        "answer is closer to the correct value than the one before, -this when farther; a dense "
        "signal for reading a critique (numeric answers only; 0 turns it off)",
    )
    edit_reward: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="with per_turn_credit: an attempt that edits the last wrong answer "
        "('-76 - 1 = -77') earns +this when the edit goes the answer's way and -this when it "
        "goes the other way: the direction a critique states, for a base that revises by "
        "editing (model.tiny.edit_rate; integer arithmetic only; 0 turns it off)",
    )
    frozen_first_attempt: bool = Field(
        default=False,
        description="train_rl2f trains revisions only: the base, frozen, writes every first "
        "attempt (which carries no loss) and is published with the policy in its "
        "first_attempt/ folder, so every later stage pairs them the same way. RL at a learning "
        "rate that teaches the tiny model to read a critique wrecks its first answer; this "
        "keeps it by construction. No effect on train_single_turn",
    )
    later_turns_positive_only: bool = Field(
        default=False,
        description="with per_turn_credit: negative advantages of turns after the first are "
        "dropped, so a wrong revision (mostly right steps, wrong result) is not pushed down",
    )
    fading_teacher: bool = Field(
        default=False,
        description="the critique level fades diagnostic -> directional -> binary over "
        "training (thirds of the steps) instead of staying at teacher.level",
    )
    use_vllm: bool = Field(
        default=False,
        description="sample the training conversations with vLLM colocated in each training "
        "process (TRL's vllm_mode=colocate; the policy's weights are synced into it before every "
        "step) instead of transformers' generate; needs a CUDA GPU and the vllm extra",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="with use_vllm: share of each GPU's memory vLLM reserves; the trainer keeps "
        "the rest for weights, gradients and optimizer state",
    )
    lora: bool = Field(
        default=False, description="train LoRA adapters (merged on save) instead of all weights"
    )
    lora_r: int = Field(default=16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (alpha / r)")
    save_steps: int = Field(default=10, ge=1, description="checkpoint interval (resume)")
    seed: int = Field(default=0, description="training seed: task order, sampling, initialisation")
    rl2f_dir: str = Field(
        default="models/rl2f",
        description="where train_rl2f writes the RL2F policy, which rollout rolls out and "
        "distill fine-tunes; a DVC out, so change dvc.yaml with it",
    )
    single_turn_dir: str = Field(
        default="models/single_turn",
        description="where train_single_turn writes the baseline; a DVC out",
    )


class DistillConfig(Strict):
    episodes_dir: str = Field(
        default="data/episodes/train",
        description="the RL2F policy's episodes: `rl2f rollout` writes them here and distill "
        "reads them; a DVC out, so change dvc.yaml with it",
    )
    out_dir: str = Field(default="models/rl2f_critic", description="where the model is written")
    only_followed_by_fix: bool = Field(
        default=True, description="keep only critiques whose next attempt was correct"
    )
    include_critiques: bool = Field(
        default=True,
        description="train on the teacher's critiques (predicted from public context); false "
        "leaves only the student's own correct answers: the plain self-fine-tuning ablation",
    )
    include_student_turns: bool = Field(
        default=True,
        description="also train on the solving turn of each solved episode, so the model keeps "
        "its student skill",
    )
    steps: int = Field(default=60, ge=1, description="optimizer steps")
    batch_size: int = Field(default=16, ge=1, description="examples per step, over all GPUs")
    learning_rate: float = Field(
        default=5e-4, gt=0, description="peak learning rate (cosine schedule)"
    )
    save_steps: int = Field(default=20, ge=1, description="checkpoint interval (resume)")
    seed: int = Field(default=0, description="example order and training seed")


class EvalConfig(Strict):
    models: list[str] = Field(
        default_factory=lambda: ["base", "single_turn", "rl2f", "rl2f_critic"],
        description="the built-in models to evaluate (each found at its stage's output)",
    )
    extra_models: dict[str, str] = Field(default_factory=dict, description="name -> path or hub id")
    extra_model_modes: list[Literal["teacher", "self", "retry", "llm"]] | None = Field(
        default=None,
        description="the feedback modes extra models are evaluated under (those of "
        "eval.feedback_modes it names); empty or null = all of eval.feedback_modes",
    )
    feedback_modes: list[Literal["teacher", "self", "retry", "llm"]] = Field(
        default_factory=lambda: ["teacher", "self", "retry"],
        description="what follows a wrong answer: teacher (the configured teacher), self (the "
        "model's own critique), retry (retry_message), llm (an llm teacher)",
    )
    max_turns_id: int = Field(default=10, ge=1, description="attempts per episode on eval_id")
    max_turns_ood: int = Field(
        default=4, ge=1, description="attempts per episode on the out-of-distribution splits"
    )
    max_tasks: int | None = Field(
        default=None,
        ge=1,
        description="tasks per split (a fixed pseudo-random subset by id; null = the whole "
        "split); lower it for a quick look",
    )
    num_generations: int = Field(
        default=1, ge=1, description="episodes per task; more narrows the intervals"
    )
    bootstrap_samples: int = Field(
        default=1000, ge=10, description="bootstrap resamples for every 95% interval"
    )
    sycophancy_probe: bool = Field(
        default=True,
        description="after a correct answer, also send a critique claiming it is wrong and "
        "report how often the model abandons it",
    )
    seed: int = Field(
        default=1234,
        description="sampling and bootstrap seed; every model draws the same random numbers",
    )
    episodes_dir: str = Field(
        default="data/episodes/eval", description="where evaluation episodes are written (DVC out)"
    )
    metrics_path: str = Field(
        default="reports/metrics.json", description="accuracy by turn and rates (DVC metric)"
    )
    plots_dir: str = Field(
        default="reports/plots", description="one CSV of accuracy by turn per split (DVC plots)"
    )
    comparisons_path: str = Field(
        default="reports/comparisons.json",
        description="paired differences between models (mean a - mean b by turn, with paired "
        "bootstrap 95% intervals over the shared tasks), written by the report stage",
    )
    red_team_path: str = Field(
        default="reports/leak_under_attack.json",
        description="leak rates of the privileged teachers against scripted hostile students, "
        "per split and mode, written by the red_team stage and shown by the report",
    )


# ---------------------------------------------------------------- plumbing
class TrackingConfig(Strict):
    enabled: bool = Field(default=True, description="log runs to MLflow; false logs nothing")
    tracking_uri: str = Field(
        default="sqlite:///mlflow.db",
        description="MLflow store; the MLFLOW_TRACKING_URI environment variable overrides it",
    )
    experiment: str = Field(default="rl2f", description="MLflow experiment name")
    artifact_location: str | None = Field(
        default=None,
        description="where a new experiment keeps artifacts (e.g. s3://bucket/rl2f); null = "
        "MLflow's default",
    )
    log_models: bool = Field(
        default=True, description="log trained models as run artifacts (large on real models)"
    )
    traces: bool = Field(default=True, description="log episodes as MLflow traces")
    max_traces: int = Field(default=50, ge=0, description="traces logged per model and stage")


class Config(Strict):
    data: DataConfig = Field(description="task sources and the prepare stage")
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="the student and the tiny bootstrapped model"
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="the rollout stage and the student's sampling and engine everywhere",
    )
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig, description="who critiques wrong answers, and how"
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="the two GRPO stages (RL2F and single-turn)"
    )
    distill: DistillConfig = Field(
        default_factory=DistillConfig, description="critique distillation (and its ablation)"
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="the evaluation and report stages"
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking")


# ---------------------------------------------------------------- loading
# Profile names become file names under profiles/: no separators, no leading dot, so
# ``--profile ../../x`` cannot read a file outside profiles/.
PROFILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.steps=10`` -> (["train", "steps"], 10). Values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    shown = one_line(repr(text))
    if not sep or not key.strip():
        raise ConfigError(f"override {shown}: expected KEY.PATH=VALUE")
    path = key.strip().split(".")
    if any(not part for part in path):
        raise ConfigError(f"override {shown}: empty key in KEY.PATH")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        # ReaderError (a control character) has no .problem, only a reason.
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "bad YAML"
        raise ConfigError(f"override {shown}: value is not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"override {shown}: value is nested too deeply") from None
    return path, value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {'.'.join(path)}: no list index {part!r}")
            node = node[int(part)]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"override {'.'.join(path[: i + 2])}: parent is not a mapping")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {'.'.join(path)}: no list index {last!r}")
        node[int(last)] = value
    else:
        node[last] = value


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML file") from None
    except OSError as exc:  # permissions, a broken link, an unreadable device
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    # Strict UTF-8: YAML would otherwise guess an encoding from the first bytes.
    text = decode_utf8(data, str(path), ConfigError)
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" line {mark.line + 1}"
        elif isinstance(exc, yaml.reader.ReaderError):  # a control character YAML forbids
            where = f" line {text[: exc.position].count(chr(10)) + 1}"
        else:
            where = ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return tree


def _error_keys(tree: Any) -> set[tuple[tuple[Any, ...], str]]:
    try:
        Config.model_validate(tree)
    except ValidationError as exc:
        return {(tuple(e["loc"]), e["type"]) for e in exc.errors()}
    return set()


def _blame(key: tuple[tuple[Any, ...], str], stages: list[tuple[str, Any]]) -> str:
    """The layer (params file, profile, override) that introduced an error: the first of the
    trailing layers after each of which the merged tree has it. Replaying the merge is exact
    where guessing from paths is not (a profile's list replaces the params' list whole)."""
    culprit = len(stages) - 1
    for k in range(len(stages) - 2, -1, -1):
        if key not in _error_keys(stages[k][1]):
            break
        culprit = k
    return stages[culprit][0]


def _describe(error: ValidationError, stages: list[tuple[str, Any]]) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    source = _blame((loc, first["type"]), stages)
    path = one_line(".".join(str(p) for p in loc) or "<root>")
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {path!r}"
    got = first.get("input")
    got_text = "" if isinstance(got, dict | list) else f" (got {one_line(repr(got), 80)})"
    return f"{source}: {path}: {first['msg']}{got_text}"


def _profile_path(params_path: Path, profile: str) -> Path:
    if not PROFILE_NAME.fullmatch(profile):
        raise ConfigError(
            f"profile {one_line(repr(profile))}: not a profile name (profiles/<name>.yaml)"
        )
    overlay = params_path.parent / PROFILES_DIR / f"{profile}.yaml"
    if not overlay.is_file():
        found = sorted(p.stem for p in overlay.parent.glob("*.yaml"))
        known = f" (profiles: {', '.join(found)})" if found else ""
        raise ConfigError(f"profile {profile!r}: {overlay} not found{known}")
    return overlay


def load_config(
    params: str | os.PathLike[str] = "params.yaml",
    overrides: list[str] | None = None,
    profile: str | None = None,
) -> Config:
    """Load params, then the profile overlay (``profiles/<name>.yaml``), then ``-S`` overrides.

    Every failure is a one-line :class:`ConfigError` naming the file (or override) and key."""
    params_path = Path(params)
    if "\x00" in str(params_path):  # the OS refuses such a path with a ValueError
        raise ConfigError(f"{one_line(repr(str(params_path)))}: not a valid file name")
    try:
        # The merged tree after each layer, kept to name the layer an error comes from.
        current = one_line(params_path)
        tree = _read_yaml(params_path)
        stages: list[tuple[str, Any]] = [(current, tree)]
        profile = profile or os.environ.get(PROFILE_ENV) or None
        if profile:
            overlay = _profile_path(params_path, profile)
            current = one_line(overlay)
            tree = deep_merge(copy.deepcopy(tree), _read_yaml(overlay))
            stages.append((current, tree))
        for text in overrides or []:
            current = f"override {one_line(repr(text))}"
            tree = copy.deepcopy(tree)
            apply_override(tree, *parse_override(text))
            stages.append((current, tree))
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, stages)) from None
    except RecursionError:  # a YAML alias that refers to itself (a: &x [*x])
        raise ConfigError(f"{current}: nested too deeply (a self-referencing alias?)") from None


def profile_overrides(params: str | os.PathLike[str], profile: str) -> list[str]:
    """A profile as ``--set-param=key.path=value`` arguments of ``dvc exp run``.

    DVC cannot see an overlay chosen by ``RL2F_PROFILE``: its stages would look up to date
    after a profile's run, and the default run after it would reuse the profile's outputs. Run
    as a DVC experiment with these arguments instead, the profile's values are params DVC
    records. Each key must already be in the params file (DVC sets keys, it does not add them),
    and values must be scalars or lists of scalars (the form ``-S`` parses)."""
    params_path = Path(params)
    overlay = _profile_path(params_path, profile)
    known = _read_yaml(params_path)
    arguments: list[str] = []

    def walk(node: dict[str, Any], present: Any, path: list[str]) -> None:
        for key, value in node.items():
            here = [*path, str(key)]
            dotted = ".".join(here)
            if not isinstance(present, dict) or key not in present:
                raise ConfigError(f"{overlay}: {dotted}: not in {params_path}; add it there first")
            if isinstance(value, dict):
                walk(value, present[key], here)
                continue
            items = value if isinstance(value, list) else [value]
            if any(isinstance(item, dict | list) for item in items):
                raise ConfigError(
                    f"{overlay}: {dotted}: a list of mappings cannot be a DVC override; "
                    f"select the profile with {PROFILE_ENV}={profile} instead"
                )
            arguments.append(f"--set-param={dotted}={_override_text(value)}")

    walk(_read_yaml(overlay), known, [])
    return arguments


def _override_text(value: Any) -> str:
    """A scalar or a list of scalars as DVC's override grammar reads it (YAML flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return text.strip().removesuffix("...").strip()
