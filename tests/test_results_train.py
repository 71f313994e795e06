"""The committed result of ``make train`` (docs/results/train_digits.json, a copy of the
run's summary.json): the default job on the embedded digits reaches >= 0.97 test accuracy.

The run itself is repeated by the opt-in slow test ``test_cli_train.py::test_default_main_job_reaches_097``;
this one checks that the committed file is a run of the defaults and meets the target.
"""
import json
import math
from pathlib import Path

from jaxnet.train_cli import DEFAULTS

SUMMARY = Path(__file__).resolve().parents[1] / "docs" / "results" / "train_digits.json"


def _summary() -> dict:
    return json.loads(SUMMARY.read_text())


def test_committed_make_train_run_reaches_097():
    s = _summary()
    assert s["test_accuracy"] >= 0.97
    assert math.isfinite(s["test_loss"]) and s["test_loss"] < math.log(10)   # below chance level
    assert 1 <= s["best_epoch"] <= s["epochs"] == DEFAULTS["epochs"]
    assert not s["stopped_early"]


def _parser_defaults() -> dict:
    """Every option of ``jaxnet train`` at its default, as the command line parses them."""
    import argparse

    from jaxnet.train_cli import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    ns = vars(parser.parse_args(["train"]))
    ns.pop("func")
    return ns


def test_committed_run_used_the_cli_defaults():
    s = _summary()
    args = dict(s["args"])
    assert {k: args[k] for k in DEFAULTS} == DEFAULTS
    # every other option the run recorded was at its default too (the progress bar only changes
    # what is printed; options added to the CLI after the run cannot have been set by it)
    args.pop("no_progress")
    defaults = _parser_defaults()
    unknown = set(args) - set(defaults)
    assert not unknown, f"the committed run has options the CLI no longer knows: {unknown}"
    assert args == {k: defaults[k] for k in args}
    assert (s["model"], s["data"], s["impl"]) == (DEFAULTS["model"], DEFAULTS["data"], "manual")
