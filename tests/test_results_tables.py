"""experiments.tables: the docs pages show the tables rendered from docs/results/*.json, verbatim.

A page whose table was typed by hand (or edited after a rerun) fails here until its table is
replaced by ``python -m experiments.tables NAME``'s output.
"""
import json
import shutil
from pathlib import Path

import pytest

from experiments import tables

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rendered():
    return tables.render_all()


@pytest.mark.parametrize("name", list(tables.TABLES))
def test_page_shows_the_rendered_table(rendered, name):
    page = REPO / tables.PAGES[name]
    assert page.is_file(), f"{tables.PAGES[name]} is missing"
    assert rendered[name] in page.read_text(), (
        f"{tables.PAGES[name]} does not show the `{name}` table rendered from docs/results; "
        f"replace the page's table with the output of `python -m experiments.tables {name}`")


def test_every_table_is_well_formed(rendered):
    assert set(rendered) == set(tables.TABLES) == set(tables.PAGES)
    for name, table in rendered.items():
        lines = table.splitlines()
        assert len(lines) >= 3, name
        assert set(lines[1].replace("|", "").split()) == {"---"}, name
        widths = {line.count(" | ") for line in lines}
        assert len(widths) == 1, f"{name}: rows with different numbers of cells"
        assert "nan" not in table and "None" not in table, name


def test_tables_are_read_from_the_results_files(tmp_path):
    """Change a number in a copy of the results: the rendered tables follow it."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "docs" / "results", results)
    edits = {"knn": lambda d: d["test_accuracy"].update(l2=0.1234),
             "activations": lambda d: d["activations"]["relu"].update(test_acc=0.9876),
             "convnets_seed1": lambda d: d["best"].update(final_test_acc_tta=0.5555)}
    for name, edit in edits.items():
        path = results / f"{name}.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    out = tables.render_all(results)
    assert "**0.1234** (L2, k = 15)" in out["classic"]
    assert "| ReLU | 0.458 | 0.486 | **0.988** |" in out["activations"]     # now the best: bold
    assert "**0.5555** with flip test-time augmentation" in out["convnets"]
    unchanged = tables.render_all()
    for name in ("init_stats", "optimizers", "schedules", "regularization", "fc_net"):
        assert out[name] == unchanged[name]


def test_markdown_table_and_formats():
    assert tables.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n| --- | --- |\n| 1 | 2 |"
    with pytest.raises(ValueError, match="2 headers"):
        tables.markdown_table(["a", "b"], [["1"]])
    assert tables._e(6.2499e-4) == "6.2e-4" and tables._e(1e-4) == "1e-4" and tables._e(4.96e-31) == "5e-31"
    assert tables._g(3597.3, 3) == "3.6e3" and tables._g(0.29600000381, 4) == "0.296"


def test_command_prints_the_named_tables(capsys):
    out = tables.main(["fc_net"])
    printed = capsys.readouterr().out
    assert list(out) == ["fc_net"] and out["fc_net"] in printed and "docs/deep-experiments.md" in printed
    with pytest.raises(SystemExit):
        tables.main(["no_such_table"])
