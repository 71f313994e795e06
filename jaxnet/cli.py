"""The ``jaxnet`` command: ``jaxnet gradcheck | train | bench``.

Each subcommand lives in its own small function. Errors a user can act on are printed as
one line (``jaxnet: error: ...``), never a traceback: exit status 2 for a bad argument or
input (:class:`~jaxnet.errors.UsageError`, argparse's own errors), 1 for a fault
(:class:`~jaxnet.errors.FaultError`: a full disk, a diverged run, a folder in use), 130 for a
training run stopped with Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import sys

from jaxnet.errors import EXIT_INTERRUPTED, EXIT_USAGE, FaultError, JaxnetError, UsageError, one_line

__all__ = ["main", "build_parser", "one_line", "UsageError", "FaultError"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) instead of the usage block."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _cmd_gradcheck(args) -> int:
    from tqdm import tqdm

    from jaxnet import registry
    from jaxnet.gradcheck import audit, failure_details, results_table

    names = args.op or None
    for name in names or ():
        if name not in registry.REGISTRY:
            raise UsageError(f"unknown op {name!r}; registered ops: {', '.join(registry.REGISTRY)}")
    bar = (lambda cases: tqdm(cases, desc="gradcheck", unit="case", file=sys.stderr, leave=False)) \
        if not args.quiet else None
    results = audit(names, seed=args.seed, progress=bar)
    failed = [r for r in results if not r.passed]
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        print(results_table(results))
        print(f"\n{len(results) - len(failed)}/{len(results)} cases passed "
              f"(thresholds: forward and manual vs autodiff <= 1e-9, vs numeric <= 1e-6, float64)")
        if failed:
            print("\n" + failure_details(failed))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gradcheck", help="audit every op's hand-written backward pass (float64)")
    g.add_argument("--op", action="append", metavar="NAME", help="only this op (repeatable)")
    g.add_argument("--json", action="store_true", help="print a JSON list of per-case results")
    g.add_argument("--seed", type=int, default=0, help="seed for inputs and cotangents")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_gradcheck)

    b = sub.add_parser("bench", help="time manual ops, the train step, compile and kNN side by side")
    b.add_argument("--only", action="append", metavar="SUITE", help="ops | train_step | train_step_default_flags | compile | knn (repeatable)")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.add_argument("--quick", action="store_true", help="fewer timing blocks (a smoke run)")
    b.set_defaults(func=lambda a: __import__("jaxnet.bench", fromlist=["cli"]).cli(a))

    from jaxnet.train_cli import add_train_parser

    add_train_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except JaxnetError as err:
        parser.exit(err.exit_code, f"jaxnet: {err.label}{one_line(err)}\n")
    except KeyboardInterrupt:
        parser.exit(EXIT_INTERRUPTED, "jaxnet: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
