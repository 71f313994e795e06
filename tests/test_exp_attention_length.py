"""experiments.attention_length: the smoke run (lengths 64 and 128) and its bookkeeping."""
import json

import pytest

from experiments import attention_length as exp
from jaxnet.bench.attention import JAX_NN, MANUAL, REFERENCE

pytestmark = pytest.mark.xdist_group("exp_attention_length")


def test_smoke_rows_figure_and_memory_order(tmp_path):
    res = exp.main(["--smoke", "--out", str(tmp_path), "--blocks", "1"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["smoke"] is True and saved["lengths"] == [64, 128]
    assert (tmp_path / "attention_length.png").read_bytes()[:4] == b"\x89PNG"
    rows = {(r["t"], r["candidate"]): r for r in res["rows"]}
    assert set(rows) == {(t, c) for t in (64, 128) for c in (MANUAL, REFERENCE, JAX_NN)}
    for r in rows.values():
        assert not r["skipped"] and r["median_ms"] > 0 and r["peak_mib"] >= r["temp_mib"] >= 0
    # the reference's (T, T) arrays: its temporaries grow about 4x when T doubles
    assert rows[128, REFERENCE]["temp_mib"] > 3 * rows[64, REFERENCE]["temp_mib"]


def test_a_candidate_over_the_memory_cap_is_skipped_not_run(tmp_path):
    res = exp.main(["--smoke", "--lengths", "64", "--out", str(tmp_path), "--max-gib", "1e-9", "--blocks", "1"])
    assert all(r["skipped"] and r["median_ms"] is None and r["peak_mib"] > 0 for r in res["rows"])


def test_bad_arguments_exit_with_one_line(tmp_path):
    with pytest.raises(SystemExit, match="lengths, --head-dim"):
        exp.main(["--lengths", "0", "--out", str(tmp_path)])
