"""The ``attention`` benchmark suite in --quick mode: it runs and produces its rows (timings and
memory ratios are not asserted against targets: those live in ``jaxnet bench``, never in tests)."""
from jaxnet.bench import SUITES, format_report, run
from jaxnet.bench.attention import JAX_NN, MANUAL, REFERENCE

TIME_ROW = "attention: forward+backward T=128 heads=2x16 batch=2"
MEM_ROW = "attention: compiled memory of forward+backward T=1024 heads=1x16 batch=1"


def test_attention_suite_quick_produces_its_rows():
    assert "attention" in SUITES
    report = run(("attention",), quick=True)
    rows = {r["name"]: r for r in report["benchmarks"]}
    assert list(rows) == [TIME_ROW, MEM_ROW]
    for name, batch in ((TIME_ROW, 2), (MEM_ROW, 1)):
        row = rows[name]
        assert set(row["candidates"]) == {MANUAL, REFERENCE, JAX_NN}
        for c in row["candidates"].values():
            assert c["median_ms"] > 0 and c["samples"] == 4
            assert c["sequences_per_second"] == batch / (c["median_ms"] / 1e3)
    assert set(rows[TIME_ROW]["ratios"]) == {"manual / jax.nn.dot_product_attention (time)", "manual / reference (time)"}
    assert all(v > 0 for v in rows[TIME_ROW]["ratios"].values())
    mem = rows[MEM_ROW]
    for c in mem["candidates"].values():
        assert 0 < c["temp_bytes"] < c["peak_bytes"]
    # even at T=1024 the reference holds (T, T) float32 scores: 4 MiB each; the blockwise path does not
    assert mem["candidates"][REFERENCE]["temp_bytes"] >= 1024 * 1024 * 4
    assert 0 < mem["ratios"]["peak memory manual / reference"] < 1
    assert 0 < mem["ratios"]["temp memory manual / reference"] < 1
    text = format_report(report)
    assert f"## {TIME_ROW}" in text and "seq/s" in text and "ratio peak memory manual / reference" in text
