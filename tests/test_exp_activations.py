"""experiments.activations on the embedded digits: the same (200, 200) net with sigmoid, tanh,
ReLU, leaky ReLU, ELU and maxout; files, curves and accuracies.

The default suite runs ``--smoke`` (ReLU and maxout, 2 epochs on 300 images) and checks the files,
the structure, the histories and the parameter counts; the ``--quick`` run of all six and its
accuracy claims are marked slow (``make test-slow``)."""

import json
import math

import numpy as np
import pytest


def _run(tmp_path, monkeypatch, *flags):
    monkeypatch.delenv("JAXNET_CIFAR10_DIR", raising=False)
    from experiments import activations

    out = activations.main([*flags, "--out", str(tmp_path)])
    assert (tmp_path / "results.json").is_file()
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "curves.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["quick"] is True and saved["experiment"] == "activations"
    assert saved["data_source"] == "digits" and out["data_source"] == "digits"

    runs = saved["activations"]
    epochs = saved["protocol"]["epochs"]
    for name, r in runs.items():
        h = r["history"]
        for key in ("train_loss", "train_acc", "val_acc"):
            assert len(h[key]) == epochs, (name, key)
        losses = np.asarray(h["train_loss"], dtype=float)
        assert np.all(np.isfinite(losses)), name
        assert losses[-1] < losses[0], (name, losses)  # every activation learns something
        assert 0.0 <= r["test_acc"] <= 1.0 and r["time_s"] > 0
        assert math.isclose(r["final_train_loss"], losses[-1])
        assert math.isclose(r["final_val_acc"], h["val_acc"][-1])
        assert saved["summary"][name]["test_acc"] == r["test_acc"]
    # maxout has a second set of hidden weights (Affine(2h) before each Maxout(2))
    assert runs["maxout"]["n_params"] > runs["relu"]["n_params"]
    return activations, saved, runs


def test_activations_smoke_on_digits(tmp_path, monkeypatch):
    activations, saved, runs = _run(tmp_path, monkeypatch, "--smoke")
    assert saved["smoke"] is True and list(runs) == list(activations.SMOKE_ACTIVATIONS)
    assert saved["protocol"]["n_train"] == 300 and saved["protocol"]["epochs"] == 2
    # (64 + 1) * 200 + (200 + 1) * 200 + (200 + 1) * 10 for ReLU; maxout doubles the hidden affines
    assert runs["relu"]["n_params"] == 65 * 200 + 201 * 200 + 201 * 10
    assert runs["maxout"]["n_params"] == 65 * 400 + 201 * 400 + 201 * 10


@pytest.mark.slow
def test_activations_quick_on_digits(tmp_path, monkeypatch, capsys):
    activations, saved, runs = _run(tmp_path, monkeypatch, "--quick")
    assert list(runs) == list(activations.ACTIVATIONS)

    # the ReLU family (and maxout) clearly beats chance (10 %) on the digits
    for name in ("relu", "leaky_relu", "elu", "maxout"):
        assert runs[name]["test_acc"] > 0.6 and runs[name]["final_val_acc"] > 0.6, name
    # identical init key and data order: the same-shaped nets share the parameter count
    assert len({runs[n]["n_params"] for n in ("sigmoid", "tanh", "relu", "leaky_relu", "elu")}) == 1

    printed = capsys.readouterr().out
    assert "activation" in printed and "maxout" in printed and "test acc" in printed
