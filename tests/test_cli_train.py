"""`jaxnet train`: the main job's outputs, its one-line errors, resume, and the default's accuracy."""
import json
import subprocess
import sys

import pytest

from jaxnet.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    return exc.value.code, err


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet1000"], "unknown model 'resnet1000'; expected one of"),
    (["--data", "imagenet"], "unknown data set 'imagenet'; expected one of digits, cifar10"),
    (["--lr", "-0.1"], "invalid learning rate -0.1"),
    (["--lr", "nan"], "invalid learning rate nan"),
    (["--batch-size", "5000"], "--batch-size 5000 is larger than the training set (1257 examples)"),
    (["--resume", "--out", "/nonexistent/run"], "--resume: the folder '/nonexistent/run' does not exist"),
    (["--optimizer", "lion"], "unknown optimizer 'lion'"),
])
def test_bad_input_is_a_one_line_error(argv, message, capsys, tmp_path):
    code, err = _run(["train", "--no-progress", "--out", str(tmp_path / "r")] + argv
                     if "--out" not in argv else ["train", "--no-progress"] + argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_without_checkpoint(capsys, tmp_path):
    code, err = _run(["train", "--resume", "--out", str(tmp_path)], capsys)
    assert code == 2 and "no checkpoint in" in err


def test_train_smoke_writes_its_outputs_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    # a constant rate: the resumed run (3 epochs) trains with the same program as the first (2 epochs); the
    # default cosine schedule's length is baked into the step, so the resume would compile it again
    base = ["train", "--no-progress", "--batch-size", "64", "--out", str(out), "--model", "convnet",
            "--schedule", "constant"]
    assert main(base + ["--epochs", "2"]) == 0
    for name in ("metrics.jsonl", "curves.png", "checkpoint", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for field in ("test_accuracy", "val_accuracy", "epochs", "train_seconds", "images_per_second", "impl"):
        assert field in summary
    assert summary["impl"] == "manual" and summary["epochs"] == 2
    assert summary["test_accuracy"] > 0.5            # two epochs on digits: far above chance (0.1)
    # resume to 3 epochs: one more line of metrics, the step count continues
    assert main(base + ["--epochs", "3", "--resume"]) == 0
    lines = (out / "metrics.jsonl").read_text().strip().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


@pytest.mark.slow
def test_default_main_job_reaches_097(tmp_path):
    """`make train`'s command: the default convnet, manual backward, digits: >= 0.97 test accuracy."""
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "jaxnet", "train", "--no-progress", "--out", str(out)], check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.97
    assert summary["train_seconds"] < 120
