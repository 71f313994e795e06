"""The ``jaxnet`` command: ``jaxnet gradcheck | train | bench | summary``.

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
    from jaxnet.gradcheck.audit import FORWARD_TOL, SCALE_TOL
    from jaxnet.gradcheck.float32 import FLOAT32_TOL, audit_float32, float32_failures, float32_table
    from jaxnet.gradcheck.oracles import ORACLE_TOL, check_oracles, oracle_failures, oracle_table

    names = args.op or None
    for name in names or ():
        if name not in registry.REGISTRY:
            raise UsageError(f"unknown op {name!r}; registered ops: {', '.join(registry.REGISTRY)}")

    def bar(desc, unit):
        return None if args.quiet else \
            (lambda cases: tqdm(cases, desc=desc, unit=unit, file=sys.stderr, leave=False))

    results = audit(names, seed=args.seed, progress=bar("gradcheck", "case"))
    f32 = [] if args.skip_float32 else audit_float32(names, seed=args.seed, progress=bar("float32", "case"))
    oracle = [] if args.skip_oracle else check_oracles(names, progress=bar("oracle", "input"))
    failed = [r for r in results + f32 + oracle if not r.passed]
    if args.json:
        print(json.dumps([r.to_json() for r in results + f32 + oracle], indent=2))
        return 1 if failed else 0

    def passed(rows):
        return f"{sum(r.passed for r in rows)}/{len(rows)}"

    print(results_table(results))
    if f32:
        print("\nfloat32 at extreme inputs (per op; every input is a row of --json)\n" + float32_table(f32))
    if oracle:
        print("\nNumPy oracles (per op; every input is a row of --json)\n" + oracle_table(oracle))
    print(f"\n{passed(results)} cases passed (thresholds: forward and manual vs autodiff <= {FORWARD_TOL:g} "
          f"entrywise and <= {SCALE_TOL:g} of each tensor's scale, vs numeric <= 1e-6, float64)")
    if f32:
        print(f"{passed(f32)} float32 extreme inputs passed (finite wherever the reference is; manual vs "
              f"reference <= {FLOAT32_TOL:g} of each tensor's scale)")
    if oracle:
        print(f"{passed(oracle)} oracle inputs passed (NumPy float64 forward vs both paths <= {ORACLE_TOL:g} "
              f"of each tensor's scale)")
    if [r for r in results if not r.passed]:
        print("\n" + failure_details(results))
    if [r for r in f32 if not r.passed]:
        print("\n" + float32_failures(f32))
    if [r for r in oracle if not r.passed]:
        print("\n" + oracle_failures(oracle))
    return 1 if failed else 0


def _parse_input(text: str) -> tuple:
    """``"224x224x3"`` -> (224, 224, 3): H x W x C, positive ints."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--input must be HxWxC with positive integers (e.g. 224x224x3), got {text!r}")
    return tuple(int(p) for p in parts)


def _cmd_summary(args) -> int:
    from jaxnet.nn import MODELS, summary, zoo
    names = sorted(set(zoo.ZOO) | set(MODELS))
    if args.model not in names:
        raise UsageError(f"unknown model {args.model!r}; expected one of {', '.join(names)}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.model in zoo.ZOO:
        make, default = zoo.ZOO[args.model]
    else:
        make, default = MODELS[args.model], None
    shape = _parse_input(args.input) if args.input else default
    if shape is None:
        raise UsageError(f"--input HxWxC is needed for {args.model!r} (e.g. --input 32x32x3)")
    try:
        s = summary(make(), (args.batch,) + shape)
    except ValueError as err:
        raise UsageError(f"{args.model} on input {'x'.join(map(str, shape))}: {one_line(err)}") from None
    print(s)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("gradcheck", help="audit every op's hand-written backward pass (float64, float32 at "
                                         "extreme inputs, NumPy forward oracles)")
    g.add_argument("--op", action="append", metavar="NAME", help="only this op (repeatable)")
    g.add_argument("--json", action="store_true", help="print a JSON list of per-case results")
    g.add_argument("--seed", type=int, default=0, help="seed for inputs and cotangents")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--skip-float32", action="store_true", help="skip the float32 pass at extreme inputs")
    g.add_argument("--skip-oracle", action="store_true", help="skip the NumPy forward oracles")
    g.set_defaults(func=_cmd_gradcheck)

    b = sub.add_parser("bench", help="time manual ops, the train step, compile and kNN side by side")
    b.add_argument("--only", action="append", metavar="SUITE", help="ops | train_step | train_step_default_flags | train_step_bn | train_step_bn_default_flags | compile | "
                        "knn | rnn | attention (repeatable)")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    b.add_argument("--quick", action="store_true", help="fewer timing blocks (a smoke run)")
    b.set_defaults(func=lambda a: __import__("jaxnet.bench", fromlist=["cli"]).cli(a))

    m = sub.add_parser("summary", help="a model's layers: output shapes, parameters, activation memory, "
                                       "multiply-adds (nothing runs)")
    m.add_argument("model", help="a model-zoo name (lenet5, alexnet, vgg16, resnet50, cifar_resnet20, ...) "
                                 "or a `jaxnet train --model` name")
    m.add_argument("--input", default=None, metavar="HxWxC", help="image size (default: the zoo model's own)")
    m.add_argument("--batch", type=int, default=1, help="batch size (default 1: per-image numbers)")
    m.set_defaults(func=_cmd_summary)

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
