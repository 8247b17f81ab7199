"""Typed view of ``params.yaml``.

Every knob of every stage lives in one YAML file so DVC can track it. The models here forbid
unknown keys: a typo in params.yaml must fail loudly, naming the key path, instead of silently
running with a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILE_ENV = "RL2F_PROFILE"
PROFILES_DIR = "profiles"


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message is one line for the user."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- data
class SourceConfig(Strict):
    """One task source. ``kind`` picks the loader; the other fields are the loader's."""

    kind: Literal["reasoning_gym", "humaneval", "file", "huggingface"]
    name: str = Field(description="generator name, file path or dataset id")
    domain: Literal["math", "puzzle", "maze", "code"] | None = Field(
        default=None, description="overrides the domain the source would infer"
    )
    size: int = Field(default=100, ge=1)
    seed: int = 0
    config: dict[str, Any] = Field(default_factory=dict, description="generator kwargs")
    splits: list[Literal["train", "eval_id", "eval_ood"]] = Field(default_factory=lambda: ["train"])
    eval_split: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]+$",
        description="for eval_ood sources: the evaluation split these tasks form, reported as "
        "ood_<eval_split> (default: ood_<domain>); lets two math variants be told apart",
    )
    # file / huggingface sources: which column holds what.
    columns: dict[str, str] = Field(default_factory=dict)
    subset: str | None = None
    hf_split: str = "train"


class DataConfig(Strict):
    out_dir: str = "data/tasks"
    eval_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    seed: int = 0
    sources: list[SourceConfig] = Field(min_length=1)
    validation_dir: str = Field(
        default="reports", description="where `rl2f validate` writes validation.json and .html"
    )


# ---------------------------------------------------------------- model
class TinyModelConfig(Strict):
    vocab_size: int = Field(default=256, ge=64)
    hidden_size: int = Field(default=128, ge=16)
    intermediate_size: int = Field(default=384, ge=16)
    num_hidden_layers: int = Field(default=4, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    num_key_value_heads: int = Field(default=4, ge=1)
    max_position_embeddings: int = Field(default=1024, ge=64)
    sft_steps: int = Field(default=600, ge=0)
    sft_batch_size: int = Field(default=32, ge=1)
    sft_learning_rate: float = Field(default=3e-3, gt=0)
    sft_warmup_ratio: float = Field(default=0.05, ge=0, le=1)
    sft_save_steps: int = Field(default=100, ge=1, description="checkpoint interval (resume)")
    questions_per_conversation: int = Field(default=2, ge=1)
    retry_rate: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="share of corpus questions first answered by a near miss, nudged without "
        "information and then answered right: the base learns to try again, not to read feedback",
    )
    seed: int = 0


class ModelConfig(Strict):
    student: str | None = Field(
        default=None, description="hub id or local path; None means the tiny bootstrapped model"
    )
    base_dir: str = "models/base"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)

    @property
    def base_path(self) -> str:
        return self.student or self.base_dir


# ---------------------------------------------------------------- generation
class SamplingConfig(Strict):
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=48, ge=1)
    seed: int = 0


class EngineConfig(Strict):
    kind: Literal["transformers", "vllm", "openai"] = "transformers"
    batch_size: int = Field(default=64, ge=1)
    device: str = "auto"
    # openai-compatible HTTP engine
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    model: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    concurrency: int = Field(default=8, ge=1)
    # vllm
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)


class RolloutConfig(Strict):
    num_generations: int = Field(default=8, ge=1, description="G episodes per task")
    max_turns: int = Field(default=4, ge=1)
    gamma: float = Field(default=0.7, gt=0, le=1)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    split: Literal["train", "eval_id", "eval_ood"] = "train"
    max_tasks: int | None = Field(default=None, ge=1)
    out_dir: str = "data/episodes/train"
    model_dir: str = "models/rl2f"


class TeacherConfig(Strict):
    kind: Literal["oracle", "llm", "self", "retry"] = "oracle"
    level: Literal["binary", "directional", "diagnostic"] = "diagnostic"
    max_regenerations: int = Field(default=2, ge=0)
    retry_message: str = "That is not correct. Try again."
    fallback_message: str = "That is not correct. Check your work step by step and try again."
    # llm teacher
    model: str | None = None
    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, max_new_tokens=128)
    )
    system_prompt: str = (
        "You are a teacher. You know the correct answer, but you must never state it, "
        "nor any expression equal to it. Point out the mistake in the student's last answer "
        "and give a hint that helps the student find the answer themselves."
    )
    prompt_template: str = (
        "Problem:\n{prompt}\n\nCorrect answer (secret, never reveal it): {answer}\n"
        "{solution_block}Verifier report: {diagnostics}\n\n"
        "Student's answer:\n{attempt}\n\nWrite a short critique."
    )
    # Appended to the public conversation when the model critiques its own last attempt
    # (the `self` teacher and critique distillation); may name {prompt} and {attempt}.
    self_prompt_template: str = "That answer is wrong. Say briefly what is wrong with it."


# ---------------------------------------------------------------- training
class TrainConfig(Strict):
    steps: int = Field(default=40, ge=1)
    max_tasks: int | None = Field(default=None, ge=1, description="cap on training tasks")
    learning_rate: float = Field(default=1e-4, gt=0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    tasks_per_step: int = Field(default=8, ge=1, description="distinct prompts per GRPO step")
    num_generations: int = Field(default=8, ge=2)
    max_turns: int = Field(default=4, ge=1)
    kl_beta: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    single_turn_match_budget: bool = Field(
        default=True, description="single-turn baseline samples G x T_max per task"
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
    later_turns_positive_only: bool = Field(
        default=False,
        description="with per_turn_credit: negative advantages of turns after the first are "
        "dropped, so a wrong revision (mostly right steps, wrong result) is not pushed down",
    )
    branched_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="with per_turn_credit: the share of a step's tasks rolled out from a shared "
        "wrong first attempt (the student's own, sampled once) and its critique, so the G "
        "conversations of the group differ only in how they answer the same critique; a task "
        "whose sampled first attempt is right is rolled out from the start as usual",
    )
    fading_teacher: bool = False
    lora: bool = False
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    save_steps: int = Field(default=10, ge=1)
    seed: int = 0
    rl2f_dir: str = "models/rl2f"
    single_turn_dir: str = "models/single_turn"


class DistillConfig(Strict):
    episodes_dir: str = Field(
        default="data/episodes/train", description="the RL2F policy's episodes (rl2f rollout)"
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
    learning_rate: float = Field(default=5e-4, gt=0)
    save_steps: int = Field(default=20, ge=1, description="checkpoint interval (resume)")
    seed: int = Field(default=0, description="example order and training seed")


class EvalConfig(Strict):
    models: list[str] = Field(
        default_factory=lambda: ["base", "single_turn", "rl2f", "rl2f_critic"]
    )
    extra_models: dict[str, str] = Field(default_factory=dict, description="name -> path or hub id")
    extra_model_modes: list[Literal["teacher", "self", "retry", "llm"]] | None = Field(
        default=None,
        description="the feedback modes extra models are evaluated under (those of "
        "eval.feedback_modes it names); empty or null = all of eval.feedback_modes",
    )
    feedback_modes: list[Literal["teacher", "self", "retry", "llm"]] = Field(
        default_factory=lambda: ["teacher", "self", "retry"]
    )
    max_turns_id: int = Field(default=10, ge=1)
    max_turns_ood: int = Field(default=4, ge=1)
    max_tasks: int | None = Field(default=None, ge=1)
    num_generations: int = Field(default=1, ge=1)
    bootstrap_samples: int = Field(default=1000, ge=10)
    sycophancy_probe: bool = True
    seed: int = 1234
    episodes_dir: str = "data/episodes/eval"
    metrics_path: str = "reports/metrics.json"
    plots_dir: str = "reports/plots"
    comparisons_path: str = Field(
        default="reports/comparisons.json",
        description="paired differences between models (mean a - mean b by turn, with paired "
        "bootstrap 95% intervals over the shared tasks), written by the report stage",
    )


# ---------------------------------------------------------------- plumbing
class TrackingConfig(Strict):
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "rl2f"
    artifact_location: str | None = None
    log_models: bool = True
    traces: bool = True
    max_traces: int = Field(default=50, ge=0)


class Config(Strict):
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# ---------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.steps=10`` -> (["train", "steps"], 10). Values are parsed as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


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
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return tree


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key {path!r}"
    got = first.get("input")
    got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
    return f"{source}: {path}: {first['msg']}{got_text}"


def load_config(
    params: str | os.PathLike[str] = "params.yaml",
    overrides: list[str] | None = None,
    profile: str | None = None,
) -> Config:
    """Load params, then the profile overlay (``profiles/<name>.yaml``), then ``-S`` overrides."""
    params_path = Path(params)
    tree = _read_yaml(params_path)
    profile = profile or os.environ.get(PROFILE_ENV) or None
    if profile:
        overlay = params_path.parent / PROFILES_DIR / f"{profile}.yaml"
        if not overlay.exists():
            raise ConfigError(f"profile {profile!r}: {overlay} not found")
        tree = deep_merge(tree, _read_yaml(overlay))
    for text in overrides or []:
        apply_override(tree, *parse_override(text))
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, str(params_path))) from None
