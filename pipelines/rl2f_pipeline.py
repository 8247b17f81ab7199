"""The RL2F workflow as a Kubeflow DAG:

prepare -> validate -> bootstrap -> {train_rl2f, train_single_turn} -> rollout
-> {distill, distill answers_only} -> evaluate (one task per model, in parallel) -> report,
with red team (hostile students against the teacher, after bootstrap) feeding the report too

Pipeline parameters (shown in the Kubeflow UI) default to params.yaml as it was at compile time;
``compose_params`` applies them and validates the result before any expensive step starts.
Everything runs inside an exit handler whose last task records the outcome on the MLflow parent
run.
"""

import json
from pathlib import Path

import yaml
from kfp import dsl

from components import stages as c
from pipelines.placement import CONFIG_STEP, CPU_STEP, GPU_STEP, place

REPO = Path(__file__).resolve().parents[1]
# The ablation that separates critique learning from plain fine-tuning on the policy's own
# correct answers: distill without the critiques, evaluated as an extra model (eval.extra_models).
ANSWERS_ONLY = "rl2f_answers_only"


def default_params_yaml() -> str:
    """params.yaml as one line of JSON (valid YAML): KFP writes defaults into the compiled
    file's header comment, where a multi-line string would break the YAML."""
    return json.dumps(yaml.safe_load((REPO / "params.yaml").read_text()))


def _defaults() -> dict:
    from rl2f.config import load_config

    cfg = load_config(REPO / "params.yaml")
    return {
        "train_steps": cfg.train.steps,
        "max_turns": cfg.train.max_turns,
        "teacher_kind": cfg.teacher.kind,
        "eval_max_tasks": cfg.eval.max_tasks or 0,
        "student_model": cfg.model.student or "",
    }


DEFAULTS = _defaults()


@dsl.pipeline(name="rl2f", description=__doc__.splitlines()[0])
def rl2f_pipeline(
    params_yaml: str = default_params_yaml(),
    student_model: str = DEFAULTS["student_model"],
    train_steps: int = DEFAULTS["train_steps"],
    max_turns: int = DEFAULTS["max_turns"],
    teacher_kind: str = DEFAULTS["teacher_kind"],
    eval_max_tasks: int = DEFAULTS["eval_max_tasks"],
    extra_overrides: list = [],  # noqa: B006  (KFP reads the default from the signature)
):
    # Runs last whatever happens, and gives the MLflow parent run the pipeline's outcome. It can
    # only read pipeline parameters (it is defined before the tasks it waits for).
    finish = place(
        c.finish_tracking(params_yaml=params_yaml, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
        CPU_STEP,
        cache=False,
    ).set_display_name("mlflow run status")
    with dsl.ExitHandler(finish, name="rl2f"):
        config = place(
            c.compose_params(
                params_yaml=params_yaml,
                student_model=student_model,
                train_steps=train_steps,
                max_turns=max_turns,
                teacher_kind=teacher_kind,
                eval_max_tasks=eval_max_tasks,
                extra_overrides=extra_overrides,
            ),
            CONFIG_STEP,
        ).set_display_name("params")
        params = config.output
        parent = place(
            c.start_tracking(params_yaml=params, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
            CPU_STEP,
            cache=False,  # a new pipeline run gets a new parent run
        ).set_display_name("mlflow parent run")
        # No per-run value (such as the parent run's id) among the stages' inputs: those make up the
        # cache key. Stages find the parent by the run id their pods carry; `.after` only orders
        # them after it, so parallel stages never race to create it.
        common = {"params_yaml": params, "overrides": []}

        prepared = place(c.prepare(**common), CPU_STEP).after(parent)
        validated = place(c.validate(**common, tasks=prepared.outputs["tasks"]), CPU_STEP)
        base = place(c.bootstrap(**common, tasks=prepared.outputs["tasks"]), GPU_STEP).after(
            validated
        )

        trained = {}
        for stage in ("train_rl2f", "train_single_turn"):
            trained[stage] = place(
                c.train(
                    stage=stage,
                    **common,
                    tasks=prepared.outputs["tasks"],
                    base_model=base.outputs["model"],
                ),
                GPU_STEP,
            ).set_display_name(stage)

        episodes = place(
            c.rollout(
                **common,
                tasks=prepared.outputs["tasks"],
                policy=trained["train_rl2f"].outputs["model"],
            ),
            GPU_STEP,
        )
        critic = place(
            c.distill(
                **common,
                tasks=prepared.outputs["tasks"],
                episodes=episodes.outputs["episodes"],
                policy=trained["train_rl2f"].outputs["model"],
            ),
            GPU_STEP,
        )
        answers_only = place(
            c.distill(
                **(common | {"overrides": ["distill.include_critiques=false"]}),
                tasks=prepared.outputs["tasks"],
                episodes=episodes.outputs["episodes"],
                policy=trained["train_rl2f"].outputs["model"],
            ),
            GPU_STEP,
        ).set_display_name("distill answers_only")

        models = {
            "base": base.outputs["model"],
            "single_turn": trained["train_single_turn"].outputs["model"],
            "rl2f": trained["train_rl2f"].outputs["model"],
            "rl2f_critic": critic.outputs["critic"],
            ANSWERS_ONLY: answers_only.outputs["critic"],
        }
        results = {
            name: place(
                c.evaluate(model_name=name, **common, tasks=prepared.outputs["tasks"], model=model),
                GPU_STEP,
            ).set_display_name(f"evaluate {name}")
            for name, model in models.items()
        }
        leaks = place(
            c.red_team(**common, tasks=prepared.outputs["tasks"], base_model=base.outputs["model"]),
            CPU_STEP,
        ).set_display_name("red team")
        place(
            c.report(
                **common,
                red_team_leaks=leaks.outputs["leaks"],
                base_results=results["base"].outputs["results"],
                single_turn_results=results["single_turn"].outputs["results"],
                rl2f_results=results["rl2f"].outputs["results"],
                critic_results=results["rl2f_critic"].outputs["results"],
                answers_only_results=results[ANSWERS_ONLY].outputs["results"],
            ),
            CPU_STEP,
        )
