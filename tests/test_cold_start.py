"""Start-up (issue 17's cold start): what `import jaxnet` + the first train step pay for, and that
the changes made for it leave behaviour unchanged.

One child process (`child`, module-scoped: one import; the benchmark net's init compiled as
`create_train_state` compiles it and as XLA compiles by default) runs with XLA's default compile
settings: the default test tier compiles with XLA's optimisations mostly off and the loop emitters
on (`tests/conftest.py`), which would make the init's compile options a no-op in-process, and the
bit-for-bit comparison would prove nothing.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet.train import state as state_mod
from jaxnet.train.state import TrainState, as_key

HEAVY = ("flax", "matplotlib", "tqdm", "sklearn", "torch", "PIL", "pandas")

CHILD = textwrap.dedent("""
    import json, sys, functools
    import jaxnet, jax, optax
    out = {}
    from jaxnet.train import create_train_state, make_train_step
    from jaxnet.train import state as S
    from jaxnet.bench.suites import jaxnet_convnet
    model, opt = jaxnet_convnet("manual"), optax.adam(1e-3)
    make_train_step(model, opt, impl="manual")
    out["heavy_imported"] = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    out["options"] = S._init_compile_options()

    shape = (8, 32, 32, 3)
    def leaves(tree):
        return [jax.random.key_data(l) if jax.dtypes.issubdtype(l.dtype, jax.dtypes.prng_key) else l
                for l in jax.tree.leaves(tree)]
    got = leaves(create_train_state(model, opt, 0, shape))
    key = S.as_key(0)
    init = jax.jit(functools.partial(S._init, model, opt, shape))   # XLA's default compile: the oracle
    want = leaves(init(key))
    import numpy as np
    out["n_leaves"] = len(want)
    out["same_as_default"] = [bool(np.array_equal(np.asarray(a), np.asarray(b))) and a.dtype == b.dtype
                              for a, b in zip(got, want)]
    out["weights_differ_from_zero"] = sum(bool(np.any(np.asarray(a) != 0)) for a in want)

    # the checkpoint module imports flax on first use, and registers TrainState with it then
    import tempfile, os
    from jaxnet.train import save_checkpoint, load_checkpoint
    ts = create_train_state(model, opt, 0, shape)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(os.path.join(d, "ck"), ts)
        back = load_checkpoint(os.path.join(d, "ck"), ts)[0]
    out["checkpoint_roundtrip"] = all(bool(np.array_equal(np.asarray(a), np.asarray(b)))
                                      for a, b in zip(leaves(ts), leaves(back)))
    from flax import serialization
    sd = serialization.to_state_dict(ts)   # an unregistered class would come back as itself
    out["state_dict_keys"] = sorted(sd) if isinstance(sd, dict) else repr(type(sd))
    print(json.dumps(out))
""").replace("set(HEAVY)", repr(set(HEAVY)))


@pytest.fixture(scope="module")
def child():
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_DISABLE_MOST_OPTIMIZATIONS", "JAXNET_XLA_FLAGS")}
    env["JAXNET_COMPILATION_CACHE"] = "0"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_and_train_step_do_not_import_heavy_packages(child):
    # flax (whose package import pulls in flax.linen), plotting, progress bars, other frameworks:
    # none of them is needed to build a train step
    assert child["heavy_imported"] == [], child["heavy_imported"]


def test_init_params_are_bit_identical_to_the_default_compile(child):
    # create_train_state compiles its init with INIT_COMPILE_OPTIONS; every leaf (step, 8 params,
    # Adam's count/mu/nu, the key) equals XLA's default compile of the same program, bit for bit
    assert child["options"] == state_mod.INIT_COMPILE_OPTIONS
    assert child["n_leaves"] == 27 and child["weights_differ_from_zero"] >= 4
    assert all(child["same_as_default"]), child["same_as_default"]


def test_checkpoint_imports_flax_on_use_and_registers_train_state(child):
    assert child["checkpoint_roundtrip"]
    assert child["state_dict_keys"] == ["key", "opt_state", "params", "state", "step"]


# ----------------------------------------------------------------------------- in-process checks

def _tiny_state():
    return TrainState(step=jnp.zeros((), jnp.int32), params={"fc": {"w": np.ones((2, 3), np.float32)}},
                      state={}, opt_state=(np.zeros(3, np.float32),), key=np.array([0, 7], np.uint32))


def test_train_state_is_the_same_pytree_as_a_flax_struct_dataclass():
    """The oracle: the same fields under flax.struct.dataclass, what TrainState used to be."""
    struct = pytest.importorskip("flax.struct", reason="flax is the oracle for the old TrainState")
    serialization = pytest.importorskip("flax.serialization", reason="flax is the oracle")
    state_mod._register_flax_serialization(serialization)

    @struct.dataclass
    class Old:
        step: jax.Array
        params: object
        state: object
        opt_state: object
        key: jax.Array

    new = _tiny_state()
    old = Old(**{f.name: getattr(new, f.name) for f in dataclasses.fields(new)})
    flat_new, tree_new = jax.tree_util.tree_flatten_with_path(new)
    flat_old, tree_old = jax.tree_util.tree_flatten_with_path(old)
    assert [jax.tree_util.keystr(p) for p, _ in flat_new] == [jax.tree_util.keystr(p) for p, _ in flat_old]
    assert tree_new.num_leaves == tree_old.num_leaves == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.step = 1
    moved = new.replace(step=jnp.ones((), jnp.int32))
    assert isinstance(moved, TrainState) and int(moved.step) == 1 and int(new.step) == 0
    sd_new, sd_old = serialization.to_state_dict(new), serialization.to_state_dict(old)
    assert jax.tree.structure(sd_new) == jax.tree.structure(sd_old)
    restored = serialization.from_state_dict(new, serialization.to_state_dict(moved))
    assert isinstance(restored, TrainState) and int(restored.step) == 1
    with pytest.raises(ValueError, match="Unknown field"):
        serialization.from_state_dict(new, {**sd_new, "extra": 1})


def test_as_key_builds_the_prng_key_of_an_int_seed():
    for seed in (0, 1, 12345, 2 ** 31 - 1, 2 ** 31, -1):   # the last two take PRNGKey's own path
        got, want = as_key(seed), jax.random.PRNGKey(seed)
        assert got.dtype == want.dtype and got.shape == want.shape and got.weak_type == want.weak_type
        assert np.array_equal(np.asarray(got), np.asarray(want)), seed
    key = jax.random.PRNGKey(3)
    assert as_key(key) is key
    with pytest.raises(TypeError, match="expected an int seed"):
        as_key(True)


def test_init_compile_options_respect_the_user(monkeypatch):
    monkeypatch.delenv("JAXNET_XLA_FLAGS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    assert state_mod._init_compile_options() == {k: v for k, v in state_mod.INIT_COMPILE_OPTIONS.items()
                                                 if k != "xla_cpu_use_fusion_emitters"}
    monkeypatch.setenv("XLA_FLAGS", "")
    assert state_mod._init_compile_options() == state_mod.INIT_COMPILE_OPTIONS
    monkeypatch.setenv("JAXNET_XLA_FLAGS", "0")
    assert state_mod._init_compile_options() is None


@pytest.mark.slow
def test_bench_compile_reports_wall_and_cpu_medians_of_five():
    from jaxnet.bench.suites import bench_compile
    res = bench_compile()
    cold = res["candidates"]["import jaxnet + first step (fresh process)"]
    warm = res["candidates"]["import jaxnet + first step (fresh process, warm compilation cache)"]
    cpu = res["candidates"]["import jaxnet + first step (fresh process), CPU user+sys"]
    assert cold["samples"] == warm["samples"] == cpu["samples"] == 5
    assert cold["median_ms"] == float(np.median(cold["wall_ms"])) and cpu["median_ms"] == cold["cpu_median_ms"]
    assert all(c > 0 for c in cold["cpu_ms"] + warm["cpu_ms"])
    assert warm["cpu_median_ms"] < cold["cpu_median_ms"]   # the warm cache skips the compiles
    assert set(res["load_average_1min"]) == {"before", "after"}
