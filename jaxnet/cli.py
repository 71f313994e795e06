"""The ``jaxnet`` command: ``jaxnet gradcheck | train | bench``.

Each subcommand lives in its own small function; errors a user can fix are
printed as one line (``jaxnet: error: ...``) with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys


class UsageError(Exception):
    """A bad argument or input: printed as one line, no traceback."""


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
    parser = argparse.ArgumentParser(prog="jaxnet", description=__doc__.splitlines()[0])
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

    try:
        from jaxnet.train_cli import add_train_parser
    except ImportError:  # pragma: no cover - the training CLI is optional while it is being built
        pass
    else:
        add_train_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        parser.exit(2, f"jaxnet: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
