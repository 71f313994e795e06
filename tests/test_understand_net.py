"""experiments._understand_net: the shared network of the understanding experiments refuses bad
flags and unusable checkpoints in one line (exit 2) before anything is trained. (The training
and caching path runs in every understanding experiment's smoke test.)"""
import numpy as np
import pytest

from experiments._common import parse_args
from experiments._understand_net import add_net_flags, trained_net
from jaxnet.train import TrainState, save_checkpoint

# with the understanding experiments' tests: the smoke net, cached per run, is trained once
pytestmark = pytest.mark.xdist_group("exp_understand")


def _args(tmp_path, monkeypatch, *flags):
    monkeypatch.delenv("JAXNET_CIFAR10_DIR", raising=False)
    return parse_args("probe", "test", add_net_flags, ["--smoke", "--out", str(tmp_path), *flags])


def _exits_with(args, capsys, message):
    with pytest.raises(SystemExit) as e:
        trained_net(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("experiments.probe: ") and message in err[0], err


def test_net_epochs_below_one_is_refused(tmp_path, monkeypatch, capsys):
    _exits_with(_args(tmp_path, monkeypatch, "--net-epochs", "0"), capsys, "--net-epochs must be >= 1, got 0")


def test_a_corrupt_checkpoint_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "net.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    _exits_with(_args(tmp_path, monkeypatch, "--checkpoint", str(bad)), capsys, "cannot read the net's checkpoint")


def test_a_checkpoint_of_another_model_is_refused(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "other.ckpt")
    ts = TrainState(step=np.int32(0), params={"w": np.zeros(3, np.float32)}, state={}, opt_state=(),
                    key=np.zeros(2, np.uint32))
    save_checkpoint(path, ts, config={"model": "two_layer_net", "input_shape": [8, 8, 1]})
    _exits_with(_args(tmp_path, monkeypatch, "--checkpoint", path), capsys, "not a fast_convnet checkpoint")


def test_a_net_near_chance_gets_a_one_line_warning(tmp_path, monkeypatch, capsys):
    import jaxnet.train
    monkeypatch.setattr(jaxnet.train, "evaluate", lambda *a, **k: (2.3, 0.1))   # as if it learned nothing
    net = trained_net(_args(tmp_path, monkeypatch))
    assert net.test_accuracy == 0.1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("experiments.probe: warning: the net's test accuracy 0.1000 is near chance")
    assert net.checkpoint in err[0]
