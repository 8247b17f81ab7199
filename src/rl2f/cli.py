"""``rl2f <stage>``: the single entry point DVC, Kubeflow components and people use.

Each stage reads params.yaml (``--params`` for another file), applies the profile overlay
(``--profile ci`` or ``RL2F_PROFILE``) and DVC-style ``-S key.path=value`` overrides, then
calls the stage function in :mod:`rl2f.stages`. Bad input ends the process with one line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rl2f.config import ConfigError, load_config, profile_overrides
from rl2f.errors import UserError, one_line
from rl2f.stages import STAGES


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--profile", default=None, help="overlay profiles/<name>.yaml, e.g. ci")
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one param, e.g. -S train.steps=10 (repeatable)",
    )


def _pipeline_parser(sub: argparse._SubParsersAction) -> None:
    pipeline = sub.add_parser("pipeline", help="compile, run locally or submit the Kubeflow DAG")
    actions = pipeline.add_subparsers(dest="action", required=True)
    compile_ = actions.add_parser("compile", help="write pipelines/rl2f.yaml")
    compile_.add_argument("--output", default=None, help="default pipelines/rl2f.yaml")
    local = actions.add_parser("run-local", help="run the compiled YAML under kfp.local")
    _add_config_args(local)
    local.add_argument("--pipeline-root", default="kfp-local", help="where artifacts go")
    submit = actions.add_parser("submit", help="submit to Kubeflow Pipelines (kfp.Client)")
    _add_config_args(submit)
    submit.add_argument(
        "--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080"
    )
    submit.add_argument("--namespace", default=None)
    submit.add_argument("--experiment", default="rl2f")
    submit.add_argument("--run-name", default=None)
    submit.add_argument("--cron", default=None, help="recurring run, 6-field cron (seconds first)")
    for parser in (compile_, local, submit):
        parser.set_defaults(command="pipeline")


def _cluster_parser(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="apply the k8s/ base or show its status")
    actions = cluster.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="server-side apply k8s/ and wait for MLflow/teacher")
    apply.add_argument("--base", default="k8s", help="kustomize base directory")
    apply.add_argument("--wait", type=float, default=600.0, help="seconds to wait for readiness")
    apply.add_argument(
        "--cache-storage-class",
        help="storage class of the model-cache claim (default: the cluster's default class)",
    )
    apply.add_argument("--cache-size", help="size of the model-cache claim (default: 200Gi)")
    apply.add_argument(
        "--cache-access-mode",
        help="ReadWriteOnce (default; works everywhere) or ReadWriteMany (parallel model steps "
        "on several nodes; needs an RWX class such as NFS, CephFS, EFS or Filestore)",
    )
    state = actions.add_parser("status", help="deployments, readiness and endpoints")
    state.add_argument("--namespace", default="rl2f")
    for parser in (apply, state):
        parser.set_defaults(command="cluster")


def _run_cluster(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rl2f import cluster

    if args.action == "apply":
        cache = cluster.CacheVolume(
            args.cache_storage_class, args.cache_size, args.cache_access_mode
        )
        states = cluster.apply(Path(args.base), wait_s=args.wait, cache=cache)
    else:
        states = cluster.status(args.namespace)
    print(cluster.format_states(states))


def _run_pipeline(args: argparse.Namespace) -> None:
    from pathlib import Path

    from rl2f import kubeflow

    if args.action == "compile":
        output = Path(args.output) if args.output else None
        print(kubeflow.compile_pipeline(Path("."), output))
        return
    cfg = load_config(args.params, args.overrides, args.profile)
    if args.action == "run-local":
        kubeflow.run_local(cfg, pipeline_root=Path(args.pipeline_root))
    else:
        print(
            kubeflow.submit(
                cfg,
                args.host,
                namespace=args.namespace,
                experiment=args.experiment,
                run_name=args.run_name,
                cron=args.cron,
            )
        )


def _seeds_parser(sub: argparse._SubParsersAction) -> None:
    seeds = sub.add_parser(
        "seeds", help="summarise runs repeated over training seeds (make seeds writes them)"
    )
    seeds.add_argument("runs", nargs="+", type=Path, help="folders with metrics/comparisons.json")
    seeds.add_argument("--out", type=Path, default=Path("reports"), help="where seeds.md goes")


def _run_seeds(args: argparse.Namespace) -> None:
    from rl2f.evaluation.seeds import write_summary

    write_summary(args.runs, args.out)
    print((args.out / "seeds.md").read_text())


def _profile_parser(sub: argparse._SubParsersAction) -> None:
    profile = sub.add_parser(
        "profile",
        help="a profile as `dvc exp run` arguments, one per line (make exp uses it)",
    )
    profile.add_argument("name", help="a profile under profiles/ (e.g. resolve)")
    profile.add_argument("--params", default="params.yaml", help="the params file beside it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rl2f", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        parser_ = sub.add_parser(name, help=stage.help, description=stage.help)
        _add_config_args(parser_)
        parser_.set_defaults(stage=name)
    _pipeline_parser(sub)
    _cluster_parser(sub)
    _seeds_parser(sub)
    _profile_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if args.command == "pipeline":
            _run_pipeline(args)
        elif args.command == "cluster":
            _run_cluster(args)
        elif args.command == "seeds":
            _run_seeds(args)
        elif args.command == "profile":
            print("\n".join(profile_overrides(args.params, args.name)))
        else:
            STAGES[args.stage].run(load_config(args.params, args.overrides, args.profile))
    except (ConfigError, UserError) as exc:
        # one_line: a message quoting a corrupt input must not spill control characters or
        # megabytes onto the terminal.
        print(f"rl2f {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise
        # A path from params the OS refuses (permissions, a file where a folder should be):
        # the user's to fix, so one line naming it rather than a traceback.
        print(
            f"rl2f {args.command}: error: {one_line(exc.filename)}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
