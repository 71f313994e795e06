"""`jaxnet train` and `fit` under bad input and faults: one line, the right exit status, nothing
lost or silently wrong (exit 2: a bad argument or input, 1: a fault, 130: Ctrl-C)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet import errors, train_cli
from jaxnet.cli import build_parser, main
from jaxnet.data import load_digits, normalize_dataset
from jaxnet.nn import get_model
from jaxnet.optim import make_optimizer
from jaxnet.train import checkpoint as checkpoint_module
from jaxnet.train import create_train_state, fit, load_checkpoint, read_checkpoint, save_checkpoint
from jaxnet.train import runfiles
from jaxnet.train.fit import (
    DivergenceWarning,
    NonFiniteError,
    TrainingInterrupted,
    check_labels,
)

# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so the train steps fit
# compiles for the module's fixtures are reused, not compiled again on the other worker.
pytestmark = pytest.mark.xdist_group("hardening_cli")


fit_module = sys.modules["jaxnet.train.fit"]  # the package's `fit` attribute is the function
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--model", "two_layer", "--no-progress"]


def _run(argv, capsys):
    """``main(argv)`` -> (exit status, stderr); a return value counts as the status."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


def _unwritable(folder: str) -> bool:
    try:
        fd = os.open(os.path.join(folder, ".jaxnet-probe"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError:
        return os.path.isdir(folder)
    os.close(fd)
    os.unlink(os.path.join(folder, ".jaxnet-probe"))
    return False


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def tiny():
    """96 training and 32 validation digits (3 steps of 32 per epoch)."""
    ds = normalize_dataset(load_digits(seed=0), "channel")
    return ds.replace(x_train=ds.x_train[:96], y_train=ds.y_train[:96],
                      x_val=ds.x_val[:32], y_val=ds.y_val[:32])


@pytest.fixture(scope="module")
def model():
    return get_model("two_layer", num_classes=10, impl="manual")


@pytest.fixture(scope="module")
def sgd():
    """One optimizer object for the module: fit reuses the compiled steps of (model, optimizer)."""
    return make_optimizer("sgd", 0.1)


# ----------------------------------------------------------------------------- usage errors, table


USAGE = [  # (argv, message); every row: exit 2, one line, nothing created in --out
    (["--out", ""], "--out must name a folder, got an empty string"),
    (["--clip-norm", "0"], "--clip-norm 0.0 is invalid"),
    (["--clip-norm", "-1"], "--clip-norm -1.0 is invalid"),
    (["--clip-norm", "inf"], "--clip-norm inf is invalid"),
    (["--clip-norm", "nan"], "--clip-norm nan is invalid"),
    (["--weight-decay", "inf"], "--weight-decay inf is invalid"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1 is invalid"),
    (["--weight-decay", "nan"], "--weight-decay nan is invalid"),
    (["--weight-decay", "1e39"], "--weight-decay 1e+39 is too large"),
    (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    (["--seed", str(2**32)], "--seed must be in 0..4294967295, got 4294967296"),
    (["--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    (["--lr", "1e-320"], "--lr 1e-320 is 0 in float32 training"),
    (["--lr", "1e-40"], "--lr 1e-40 is 0 in float32 training"),
    (["--lr", "inf"], "invalid learning rate inf"),
    (["--lr", "1e39"], "--lr 1e+39 is too large"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--batch-size", "-5"], "--batch-size must be >= 1, got -5"),
    (["--patience", "0"], "--patience must be >= 1, got 0"),
    (["--data-dir", "/tmp"], "--data-dir is only used with --data cifar10"),
    (["--devices", "64"], "--devices 64: only"),
    (["--devices", "0"], "--devices must be >= 1, got 0"),
    (["--impl", "fast"], "unknown --impl 'fast'; expected manual or autodiff"),
    (["--on-nonfinite", "ignore"], "argument --on-nonfinite: invalid choice: 'ignore'"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["--allow-changed"], "--allow-changed only applies with --resume"),
]


@pytest.mark.parametrize("argv,message", USAGE, ids=[" ".join(a) or "empty" for a, _ in USAGE])
def test_bad_argument_is_one_line_exit_2_before_any_work(argv, message, capsys, tmp_path):
    out = tmp_path / "run"
    full = ["train", *FAST, "--out", str(out)] + argv if "--out" not in argv else ["train", *FAST] + argv
    code, err = _run(full, capsys)
    line = _one_line(err)
    assert code == 2, err
    assert message in line, line
    assert not out.exists()                     # validated before anything is created or run


def test_out_is_a_file_or_unwritable(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    cases = [(str(f), "is a file, not a folder"), (str(f / "sub"), "cannot create the folder")]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        cases.append((str(ro), "is not writable"))
        cases.append((str(ro / "sub"), "cannot create the folder"))
    elif _unwritable("/sys"):                        # root writes anywhere but a read-only mount
        cases.append(("/sys", "is not writable"))
    for out, message in cases:
        code, err = _run(["train", *FAST, "--out", out], capsys)
        assert code == 2 and message in _one_line(err), (out, err)


def test_seed_range_and_impl_alias_are_accepted():
    parser = build_parser()
    for argv, impl in ((["--seed", str(2**32 - 1), "--impl", "auto"], "autodiff"),
                       (["--seed", "0", "--impl", "autodiff"], "autodiff"),
                       (["--impl", "manual"], "manual")):
        args = parser.parse_args(["train", "--out", "/tmp/unused"] + argv)
        train_cli._validate(args)
        assert args.impl == impl
        assert train_cli.IMPLS[args.impl] in ("auto", "manual")
    assert jax.random.PRNGKey(2**32 - 1).shape == (2,)


def test_cli_subprocess_one_line_no_traceback(tmp_path):
    """The installed command, end to end: bad input is one line on stderr, exit 2."""
    cases = [(["--weight-decay", "inf"], "--weight-decay inf is invalid"),
             (["--seed", "-1"], "--seed must be in"),
             (["--devices", "64"], "--devices 64: only")]
    for argv, message in cases:
        p = subprocess.run([sys.executable, "-m", "jaxnet", "train", "--no-progress", "--out",
                            str(tmp_path / "r"), *argv], capture_output=True, text=True, cwd=REPO)
        assert p.returncode == 2, p.stderr
        assert message in _one_line(p.stderr) and p.stdout == ""


# ----------------------------------------------------------------------------- import structure


def test_errors_live_in_a_low_module():
    from jaxnet import cli
    assert cli.UsageError is errors.UsageError and cli.FaultError is errors.FaultError
    assert errors.UsageError.exit_code == 2 and errors.FaultError.exit_code == 1
    src = open(os.path.join(REPO, "jaxnet", "cli.py")).read()
    assert "except ImportError" not in src
    for name in ("train_cli.py", os.path.join("bench", "__init__.py")):
        assert "from jaxnet.cli import" not in open(os.path.join(REPO, "jaxnet", name)).read(), name
    import jaxnet.bench as bench
    with pytest.raises(errors.UsageError, match="unknown benchmark 'nope'"):
        bench.cli(types.SimpleNamespace(only=["nope"], quick=True, json=False))
    code = ("import sys, jaxnet.train_cli, jaxnet.bench; "
            "assert 'jaxnet.cli' not in sys.modules, 'train_cli/bench import the cli'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ----------------------------------------------------------------------------- the output folder


def test_existing_checkpoint_is_not_overwritten_without_a_flag(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint").write_bytes(b"earlier run")
    code, err = _run(["train", *FAST, "--out", str(out)], capsys)
    assert code == 2 and "holds the checkpoint of an earlier run; pass --resume" in _one_line(err)
    assert (out / "checkpoint").read_bytes() == b"earlier run"
    assert not (out / runfiles.LOCK_NAME).exists()      # the lock is released on errors too


def test_a_live_lock_refuses_a_second_run(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / runfiles.LOCK_NAME).write_text(f"{sleeper.pid}\n")
        code, err = _run(["train", *FAST, "--out", str(out)], capsys)
        line = _one_line(err)
        assert code == 1 and f"in use by another jaxnet run (pid {sleeper.pid}" in line
        assert not (out / "metrics.jsonl").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_hold_folder_is_exclusive_reentrant_and_takes_over_stale_locks(tmp_path):
    lock = tmp_path / runfiles.LOCK_NAME
    lock.write_text(f"{_dead_pid()}\n")                 # a killed run's lock: stale
    with runfiles.hold_folder(tmp_path) as path:
        assert int(open(path).read()) == os.getpid()
        with runfiles.hold_folder(tmp_path):           # nested in one process: fine
            pass
        assert lock.exists()
        code = ("import sys; from jaxnet.train.runfiles import hold_folder, FolderInUseError\n"
                "try:\n    hold_folder(sys.argv[1]).__enter__()\n"
                "except FolderInUseError as e:\n    print(e.pid)\n")
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           check=True, cwd=REPO)
        assert p.stdout.strip() == str(os.getpid())
    assert not lock.exists()


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    ts = create_train_state(get_model("two_layer", num_classes=10), optax.sgd(0.1), 0, (2, 8, 8, 1))
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f".checkpoint.tmp-{dead}-abc{i}" for i in range(3)]
    legacy_old, legacy_new = tmp_path / ".checkpoint.tmpold", tmp_path / ".checkpoint.tmpnew"
    kept = tmp_path / f".checkpoint.tmp-{live}-xyz"
    for f in (*stale, kept, legacy_old, legacy_new):
        f.write_bytes(b"\0" * 1000)
    legacy_old.rename(tmp_path / ".checkpoint.tmp-aaaa")
    legacy_old = tmp_path / ".checkpoint.tmp-aaaa"
    os.utime(legacy_old, (1, 1))
    legacy_new.rename(tmp_path / ".checkpoint.tmp-bbbb")
    legacy_new = tmp_path / ".checkpoint.tmp-bbbb"
    save_checkpoint(tmp_path / "checkpoint", ts)
    assert not any(f.exists() for f in stale) and not legacy_old.exists()
    assert kept.exists() and legacy_new.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoint", kept.name, legacy_new.name])


# ----------------------------------------------------------------------------- resume settings


def _args(argv):
    args = build_parser().parse_args(["train"] + argv)
    train_cli._validate(args)
    return args


def test_resume_with_changed_settings_is_refused_in_one_short_line(capsys, tmp_path):
    out = tmp_path / "run"
    ts = create_train_state(get_model("two_layer", num_classes=10), optax.sgd(0.1), 0, (2, 8, 8, 1))
    saved = train_cli.run_settings(_args(["--out", str(out), "--model", "two_layer", "--lr", "0.003"]))
    save_checkpoint(out / "checkpoint", ts, config={"run": saved})
    code, err = _run(["train", *FAST, "--out", str(out), "--resume", "--lr", "0.01", "--schedule", "constant"],
                     capsys)
    line = _one_line(err)
    assert code == 2
    assert ("--resume: the run's settings changed: lr 0.003 -> 0.01, schedule cosine -> constant; "
            "pass --allow-changed to resume anyway") in line
    assert len(line) < 200
    # only --impl (or --epochs) changed: accepted; --allow-changed: accepted with a warning
    for argv in (["--impl", "autodiff", "--epochs", "3"], ["--lr", "0.01", "--allow-changed"]):
        train_cli._check_out_contents(_args(["--out", str(out), "--resume", "--model", "two_layer"] + argv), out)
    assert "warning: resuming with changed settings: lr 0.003 -> 0.01" in capsys.readouterr().err


def test_a_model_differing_only_in_impl_resumes_and_other_models_say_so_briefly():
    manual = repr(get_model("convnet", num_classes=10, impl="manual"))
    auto = repr(get_model("convnet", num_classes=10, impl="auto"))
    config = {"model": auto, "batch_size": 8, "n_train": 10, "input_shape": [8, 8, 8, 1]}
    fit_module._check_resume_config({**config, "model": manual}, config, "ck")
    other = repr(get_model("convnet", num_classes=7, impl="auto"))
    with pytest.raises(fit_module.CheckpointError) as exc:
        fit_module._check_resume_config({**config, "model": other}, config, "ck")
    assert "written for another model" in str(exc.value) and len(str(exc.value)) < 250


def test_resume_from_a_plain_save_checkpoint_file(tiny, model, sgd, tmp_path):
    opt = sgd
    ts = create_train_state(model, opt, 3, (32, 8, 8, 1))
    save_checkpoint(tmp_path / "checkpoint", ts)               # no fit extras, no config
    with pytest.warns(UserWarning, match="holds no training history"):
        result = fit(model, tiny, optimizer=opt, epochs=1, batch_size=32, key=0, out_dir=tmp_path,
                     resume=True, progress=False)
    assert result.history["epoch"] == [1] and int(result.train_state.step) == 3
    _, _, extra = load_checkpoint(tmp_path / "checkpoint", result.train_state)
    assert extra["epoch"] == 1


# ----------------------------------------------------------------------------- crashes and Ctrl-C


def test_a_kill_while_resuming_never_empties_the_metrics(tiny, model, sgd, tmp_path, monkeypatch):
    opt = sgd
    kw = dict(optimizer=opt, batch_size=32, key=0, out_dir=tmp_path, progress=False)
    fit(model, tiny, epochs=2, **kw)
    before = (tmp_path / "metrics.jsonl").read_text()
    assert len(before.splitlines()) == 2

    def killed(*a, **k):
        raise KeyboardInterrupt("killed while rewriting the metrics")

    monkeypatch.setattr(fit_module, "json", types.SimpleNamespace(dumps=killed))
    with pytest.raises(KeyboardInterrupt):
        fit(model, tiny, epochs=3, resume=True, **kw)
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_interrupt_saves_the_last_finished_epoch_even_between_checkpoints(tiny, model, sgd, tmp_path):
    opt = sgd

    class StopAt:
        def on_step(self, info):
            if (info["epoch"], info["step"]) == (2, 2):
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as exc:
        fit(model, tiny, optimizer=opt, epochs=4, batch_size=32, key=0, out_dir=tmp_path, progress=False,
            checkpoint_every=3, callbacks=[StopAt()])
    e = exc.value
    assert (e.epoch, e.step, e.checkpoint_epoch) == (2, 2, 1)
    assert "interrupted at epoch 2 step 2; checkpoint of epoch 1 in" in str(e)
    _, _, extra, _ = read_checkpoint(tmp_path / "checkpoint")
    assert extra["epoch"] == 1
    assert not (tmp_path / runfiles.LOCK_NAME).exists()


def _interrupting_fit(monkeypatch, at):
    import jaxnet.train as T
    real = T.fit

    class StopAt:
        def on_step(self, info):
            if (info["epoch"], info["step"]) == at:
                raise KeyboardInterrupt

    monkeypatch.setattr(T, "fit", lambda *a, **k: real(*a, callbacks=[StopAt()], **k))


def test_ctrl_c_exits_130_with_a_resumable_checkpoint(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    base = ["train", *FAST, "--batch-size", "256", "--out", str(out)]
    _interrupting_fit(monkeypatch, at=(2, 3))
    code, err = _run(base + ["--epochs", "3"], capsys)
    line = [l for l in err.splitlines() if "interrupted" in l]
    assert code == 130 and "Traceback" not in err, err
    assert line == [f"jaxnet: interrupted at epoch 2 step 3; checkpoint of epoch 1 in {out / 'checkpoint'}; "
                    f"resume with --resume"]
    assert not (out / runfiles.LOCK_NAME).exists()
    monkeypatch.undo()
    code, err = _run(base + ["--epochs", "3", "--resume"], capsys)
    assert code == 0, err
    assert [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_disk_full_while_checkpointing_keeps_the_last_good_one(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_write, calls = checkpoint_module._write, {"n": 0}

    def full_disk(f, data):
        calls["n"] += 1
        if calls["n"] > 3:                              # the second checkpoint (3 writes each)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(f, data)

    monkeypatch.setattr(checkpoint_module, "_write", full_disk)
    # --epochs 3 at batch 256: test_ctrl_c_...'s run, so its compiled programs (the cosine schedule's length
    # is part of the step); the failing second checkpoint ends the run in epoch 2 either way
    code, err = _run(["train", *FAST, "--batch-size", "256", "--epochs", "3", "--out", str(out)], capsys)
    lines = [l for l in err.splitlines() if l.startswith("jaxnet: error")]
    assert code == 1 and "Traceback" not in err and len(lines) == 1, err
    assert "No space left on device" in lines[0] and "the checkpoint of epoch 1 is intact" in lines[0]
    _, _, extra, _ = read_checkpoint(out / "checkpoint")
    assert extra["epoch"] == 1
    assert [n for n in os.listdir(out) if ".tmp-" in n] == []


# ----------------------------------------------------------------------------- divergence


def test_divergence_stops_at_the_first_non_finite_step_exit_1(capsys, tmp_path):
    out = tmp_path / "run"
    code, err = _run(["train", *FAST, "--optimizer", "sgd", "--lr", "1e6", "--epochs", "2", "--out", str(out)],
                     capsys)
    lines = [l for l in err.splitlines() if l.startswith("jaxnet: error")]
    assert code == 1 and "Traceback" not in err, err
    assert len(lines) == 1 and "non-finite loss or gradient at epoch 1 step" in lines[0]
    assert "no checkpoint was written" in lines[0] and "--on-nonfinite skip" in lines[0]
    assert not (out / "checkpoint").exists() and not (out / "summary.json").exists()


def _with_nan_example(ds, index=5):
    x = np.array(ds.x_train)
    x[index] = np.nan
    return types.SimpleNamespace(x_train=x, y_train=ds.y_train, x_val=ds.x_val, y_val=ds.y_val,
                                 num_classes=10, name="nan-digits")


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_on_nonfinite_stop_and_skip(tiny, model, sgd, mode, tmp_path):
    data = _with_nan_example(tiny)
    opt = sgd
    kw = dict(optimizer=opt, epochs=2, batch_size=32, key=0, progress=False, on_nonfinite=mode,
              out_dir=tmp_path)
    if mode == "stop":
        with pytest.raises(NonFiniteError, match=r"non-finite loss or gradient at epoch 1 step \d: "
                                                 r"the run diverged; no checkpoint was written") as exc:
            fit(model, data, **kw)
        assert exc.value.epoch == 1 and not (tmp_path / "checkpoint").exists()
        return
    result = fit(model, data, **kw)
    assert result.skipped_steps == 2                    # the batch with the NaN image, once per epoch
    assert all(np.isfinite(result.history["train_loss"]))
    for tree in (result.train_state.params, result.best_params):
        assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(tree))
    assert int(result.train_state.opt_state.total_notfinite) == 2      # optax.apply_if_finite's count


def test_an_exploding_loss_warns_once(tiny, model):
    ascent = optax.sgd(-2.0)                            # gradient ascent: the loss grows, stays finite
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(model, tiny, optimizer=ascent, epochs=3, batch_size=32, key=0, progress=False)
    found = [w for w in caught if issubclass(w.category, DivergenceWarning)]
    assert len(found) == 1 and "more than 3x its initial" in str(found[0].message)
    assert all(np.isfinite(result.history["train_loss"]))


# ----------------------------------------------------------------------------- memory and labels


def test_out_of_memory_is_one_line_with_a_batch_size_that_fits(capsys, tmp_path, monkeypatch):
    import jaxnet.train as T

    def oom(*a, **k):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.00GiB")

    monkeypatch.setattr(T, "fit", oom)
    monkeypatch.setattr(sys.modules["jaxnet.nn.summary"], "available_memory", lambda device=None: 2**20)
    code, err = _run(["train", "--no-progress", "--batch-size", "1024", "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and "Traceback" not in err
    warning = [l for l in err.splitlines() if l.startswith("jaxnet: warning:")]
    error = [l for l in err.splitlines() if l.startswith("jaxnet: error:")]
    assert len(warning) == 1 and "more than the 1.0 MiB available" in warning[0]
    assert len(error) == 1 and "out of memory at --batch-size 1024" in error[0]
    assert "would fit in the 1.0 MiB available; lower --batch-size" in error[0]


def test_summary_memory_estimate_and_largest_batch():
    from jaxnet.nn import summary
    from jaxnet.nn.summary import available_memory
    s = summary(get_model("convnet", num_classes=10), (64, 32, 32, 3))
    assert s.activation_bytes_per_example * 64 == s.total_activation_bytes
    b = s.largest_batch(s.training_bytes(100))
    assert 99 <= b <= 100 and s.training_bytes(b) <= s.training_bytes(100)
    assert s.largest_batch(0) == 0
    avail = available_memory()
    assert avail is None or avail > 0


BAD_LABELS = [("train", 10, "bad label 10 at index 4 of the train split"),
              ("train", -1, "bad label -1 at index 4 of the train split"),
              ("val", 12, "bad label 12 at index 4 of the val split")]


@pytest.mark.parametrize("split,value,message", BAD_LABELS)
def test_bad_labels_are_refused_before_training(tiny, model, split, value, message):
    ys = {s: np.array(getattr(tiny, f"y_{s}")) for s in ("train", "val")}
    ys[split][4] = value
    data = types.SimpleNamespace(x_train=tiny.x_train, y_train=ys["train"], x_val=tiny.x_val,
                                 y_val=ys["val"], num_classes=10)
    with pytest.raises(ValueError, match=message):
        check_labels(data)
    with pytest.raises(ValueError, match=message):
        fit(model, data, optimizer=optax.sgd(0.1), epochs=1, batch_size=32, key=0, progress=False)


def test_bad_labels_through_the_cli_exit_2(tiny, capsys, tmp_path, monkeypatch):
    y = np.array(tiny.y_train)
    y[0] = 10
    data = types.SimpleNamespace(x_train=tiny.x_train, y_train=y, x_val=tiny.x_val, y_val=tiny.y_val,
                                 x_test=tiny.x_val, y_test=tiny.y_val, num_classes=10, input_shape=(8, 8, 1))
    monkeypatch.setattr(train_cli, "load_dataset", lambda *a, **k: data)
    code, err = _run(["train", *FAST, "--batch-size", "32", "--out", str(tmp_path / "r")], capsys)
    assert code == 2
    assert "bad label 10 at index 0 of the train split" in err and "Traceback" not in err
    assert err.count("jaxnet: error") == 1
