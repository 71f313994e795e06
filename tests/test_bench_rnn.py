"""The ``rnn`` benchmark suite in --quick mode: it runs and produces its rows (timings are not asserted:
speed targets live in ``jaxnet bench``, never in tests)."""
import importlib.util

from jaxnet.bench import SUITES, format_report, run


def test_rnn_suite_quick_produces_its_rows():
    assert "rnn" in SUITES
    report = run(("rnn",), quick=True)
    rows = {r["name"]: r for r in report["benchmarks"]}
    assert list(rows) == ["rnn: lstm forward+backward T=10 N=8 D=H=32", "rnn: lstm forward+backward T=40 N=8 D=H=32",
                          "rnn: compile time of the manual lstm value_and_grad N=8 D=H=32"]
    has_torch = importlib.util.find_spec("torch") is not None
    for t in (10, 40):
        row = rows[f"rnn: lstm forward+backward T={t} N=8 D=H=32"]
        names = {"jaxnet manual BPTT", "jaxnet autodiff (scan)"} | ({"torch nn.LSTM"} if has_torch else set())
        assert set(row["candidates"]) == names
        for c in row["candidates"].values():
            assert c["median_ms"] > 0 and c["samples"] == 4
            assert c["sequences_per_second"] == 8 / (c["median_ms"] / 1e3)
        assert row["ratios"]["manual / autodiff (time)"] > 0
        assert ("manual / torch nn.LSTM (sequences/s)" in row["ratios"]) == has_torch
    comp = rows["rnn: compile time of the manual lstm value_and_grad N=8 D=H=32"]
    assert set(comp["candidates"]) == {"T=10", "T=40"} and comp["ratios"]["compile T=40 / T=10"] > 0
    text = format_report(report)
    assert "## rnn: lstm forward+backward T=40" in text and "seq/s" in text
