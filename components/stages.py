"""One lightweight Kubeflow component per stage.

Each runs in one of the project's images, chosen at compile time (``RL2F_IMAGE``, CUDA and vLLM,
for the steps that load models; ``RL2F_CPU_IMAGE``, slim, for the rest), installs nothing, and
makes one call into :func:`rl2f.pipeline_io.run_stage`, which maps its typed artifacts onto the
stage's usual paths. The typed inputs and outputs (Dataset, Model, Metrics, HTML, Markdown) are
what the Kubeflow UI shows as lineage, metrics and the report.
"""

import os

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

# Compile-time settings: the GPU image (Dockerfile target `gpu`: CUDA torch and vLLM) for steps
# that load models, and the slim CPU image (target `cpu`) for the others.
IMAGE = os.environ.get("RL2F_IMAGE") or "ghcr.io/rl2f/rl2f:0.1.0"
CPU_IMAGE = os.environ.get("RL2F_CPU_IMAGE") or "ghcr.io/rl2f/rl2f-cpu:0.1.0"


def component(func):  # noqa: ANN001, ANN201  (decorator)
    return dsl.component(func, base_image=IMAGE, install_kfp_package=False)


def cpu_component(func):  # noqa: ANN001, ANN201  (decorator)
    return dsl.component(func, base_image=CPU_IMAGE, install_kfp_package=False)


@cpu_component
def compose_params(
    params_yaml: str,
    student_model: str,
    train_steps: int,
    max_turns: int,
    teacher_kind: str,
    eval_max_tasks: int,
    extra_overrides: list,
) -> str:
    """Applies the UI's pipeline parameters to params.yaml and validates the result up front, so
    a typo fails the first task instead of a GPU step an hour later."""
    from rl2f.pipeline_io import compose_params_yaml

    return compose_params_yaml(
        params_yaml,
        student_model=student_model,
        train_steps=train_steps,
        max_turns=max_turns,
        teacher_kind=teacher_kind,
        eval_max_tasks=eval_max_tasks,
        extra_overrides=extra_overrides,
    )


@cpu_component
def start_tracking(params_yaml: str, run_key: str) -> str:
    """Opens the pipeline's parent MLflow run, tagged with the Kubeflow run id (``run_key``).

    Stages do not take the parent's id as an input: a per-run value among a task's inputs
    would change its cache key every run. Each stage finds the parent again by that tag, reading
    the run id from its pod (``KFP_RUN_ID``, see pipelines/placement.py). The id returned here is
    for the Kubeflow UI only."""
    from rl2f.pipeline_io import open_parent_run

    return open_parent_run(params_yaml, run_key)


@cpu_component
def finish_tracking(params_yaml: str, run_key: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """The pipeline's exit handler: gives the parent MLflow run the pipeline's outcome
    (FINISHED, FAILED or KILLED), so a failed Kubeflow run is not a finished one in MLflow."""
    from rl2f.pipeline_io import close_parent_run

    return close_parent_run(params_yaml, run_key, status.state)


@cpu_component
def prepare(params_yaml: str, overrides: list, tasks: Output[Dataset]):
    from rl2f.pipeline_io import run_stage

    run_stage("prepare", params_yaml, overrides, outputs={"data/tasks": tasks.path})


@cpu_component
def validate(
    params_yaml: str,
    overrides: list,
    tasks: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
):
    from rl2f.pipeline_io import publish_metrics, run_stage

    run_stage(
        "validate",
        params_yaml,
        overrides,
        inputs={"data/tasks": tasks.path},
        outputs={"reports/validation.json": metrics.path, "reports/validation.html": report.path},
    )
    publish_metrics(metrics)


@component
def bootstrap(
    params_yaml: str,
    overrides: list,
    tasks: Input[Dataset],
    model: Output[Model],
):
    from rl2f.pipeline_io import run_stage

    run_stage(
        "bootstrap",
        params_yaml,
        overrides,
        inputs={"data/tasks": tasks.path},
        outputs={"models/base": model.path},
        optional_outputs=frozenset({"models/base"}),  # skipped when model.student is named
    )


@component
def train(
    stage: str,
    params_yaml: str,
    overrides: list,
    tasks: Input[Dataset],
    base_model: Input[Model],
    model: Output[Model],
):
    """train_rl2f or train_single_turn: the same trainer, one component."""
    from rl2f.pipeline_io import run_stage

    out_dir = {"train_rl2f": "models/rl2f", "train_single_turn": "models/single_turn"}[stage]
    run_stage(
        stage,
        params_yaml,
        overrides,
        inputs={"data/tasks": tasks.path, "models/base": base_model.path},
        outputs={out_dir: model.path},
    )


@component
def rollout(
    params_yaml: str,
    overrides: list,
    tasks: Input[Dataset],
    policy: Input[Model],
    episodes: Output[Dataset],
):
    from rl2f.pipeline_io import run_stage

    run_stage(
        "rollout",
        params_yaml,
        overrides,
        inputs={"data/tasks": tasks.path, "models/rl2f": policy.path},
        outputs={"data/episodes/train": episodes.path},
    )


@component
def distill(
    params_yaml: str,
    overrides: list,
    tasks: Input[Dataset],
    episodes: Input[Dataset],
    policy: Input[Model],
    critic: Output[Model],
):
    """The critic, or with ``distill.include_critiques=false`` in ``overrides`` the answers-only
    ablation: one component, the model is written to ``critic`` either way."""
    from rl2f.pipeline_io import run_stage

    run_stage(
        "distill",
        params_yaml,
        overrides,
        inputs={
            "data/tasks": tasks.path,  # the leak check reads each episode's task
            "data/episodes/train": episodes.path,
            "models/rl2f": policy.path,
        },
        outputs={"models/rl2f_critic": critic.path},
    )


@component
def evaluate(
    model_name: str,
    params_yaml: str,
    overrides: list,
    tasks: Input[Dataset],
    model: Input[Model],
    results: Output[Dataset],
    metrics: Output[Metrics],
):
    """Evaluates ONE model; the pipeline fans this out over the models and ``report`` merges."""
    from rl2f.pipeline_io import evaluate_one_model, publish_metrics

    evaluate_one_model(model_name, params_yaml, overrides, tasks.path, model.path, results.path)
    publish_metrics(metrics, source=f"{results.path}/reports/metrics.json", model=model_name)


@cpu_component
def red_team(
    params_yaml: str,
    overrides: list,
    tasks: Input[Dataset],
    base_model: Input[Model],
    leaks: Output[Metrics],
):
    """Scripted hostile students against the privileged teachers; ``leaks`` carries
    leak_under_attack.json (rates per split and mode) and logs them as scalars."""
    from rl2f.pipeline_io import publish_metrics, red_team_leaks

    red_team_leaks(params_yaml, overrides, tasks.path, base_model.path, leaks.path)
    publish_metrics(leaks)


@cpu_component
def report(
    params_yaml: str,
    overrides: list,
    base_results: Input[Dataset],
    single_turn_results: Input[Dataset],
    rl2f_results: Input[Dataset],
    critic_results: Input[Dataset],
    answers_only_results: Input[Dataset],
    red_team_leaks: Input[Metrics],
    html: Output[HTML],
    markdown: Output[Markdown],
    metrics: Output[Metrics],
    comparisons: Output[Metrics],
):
    """Merges the per-model results and reports; ``comparisons`` carries comparisons.json (the
    paired differences between models) and logs its turn-1 and last-turn rows as scalars."""
    from rl2f.pipeline_io import merge_and_report, publish_comparisons, publish_metrics

    merge_and_report(
        params_yaml,
        overrides,
        [
            base_results.path,
            single_turn_results.path,
            rl2f_results.path,
            critic_results.path,
            answers_only_results.path,
        ],
        red_team_leaks=red_team_leaks.path,
        html=html.path,
        markdown=markdown.path,
        metrics_json=metrics.path,
        comparisons_json=comparisons.path,
    )
    publish_metrics(metrics)
    publish_comparisons(comparisons)
