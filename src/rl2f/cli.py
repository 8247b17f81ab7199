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

from rl2f.config import ConfigError, load_config
from rl2f.errors import UserError
from rl2f.stages import STAGES


def _stage_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text)
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
    parser.set_defaults(stage=name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rl2f", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        _stage_parser(sub, name, stage.help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        cfg = load_config(args.params, args.overrides, args.profile)
        STAGES[args.stage].run(cfg)
    except (ConfigError, UserError) as exc:
        print(f"rl2f {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
