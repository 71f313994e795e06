"""The impl switch: an argument per call and a context manager for a whole computation."""
import jax
import jax.numpy as jnp
import pytest

import jaxnet
from jaxnet import functional as F


def _uses_custom_vjp(fn, *args):
    return "custom_vjp" in str(jax.make_jaxpr(fn)(*args))


def test_impl_argument_selects_the_path():
    x = jnp.ones((2, 3))
    assert _uses_custom_vjp(lambda v: F.relu(v, impl="manual"), x)
    assert not _uses_custom_vjp(lambda v: F.relu(v, impl="autodiff"), x)
    assert not _uses_custom_vjp(lambda v: F.relu(v, impl="auto"), x)      # the alias


def test_context_manager_flips_the_default_and_restores_it():
    x = jnp.ones((2, 3))
    assert jaxnet.default_impl() == "manual"
    with jaxnet.use_impl("autodiff"):
        assert jaxnet.default_impl() == "autodiff"
        assert not _uses_custom_vjp(lambda v: F.tanh(F.relu(v)), x)
        assert _uses_custom_vjp(lambda v: F.relu(v, impl="manual"), x)   # an explicit argument wins
    assert jaxnet.default_impl() == "manual"
    assert _uses_custom_vjp(lambda v: F.tanh(F.relu(v)), x)


def test_bad_impl_name():
    with pytest.raises(ValueError, match="impl must be one of"):
        F.relu(jnp.ones(2), impl="fast")
    with pytest.raises(ValueError, match="impl must be one of"):
        with jaxnet.use_impl("cuda"):
            pass


def test_functional_docstrings_state_shapes():
    assert "(N, H, W, C)" in F.conv2d.__doc__ and "impl" in F.conv2d.__doc__


def test_auto_is_an_alias_of_autodiff():
    assert jaxnet.IMPLS == ("autodiff", "manual")
    assert jaxnet.resolve_impl("auto") == "autodiff" and jaxnet.resolve_impl("autodiff") == "autodiff"
    with jaxnet.use_impl("auto"):
        assert jaxnet.default_impl() == "autodiff"
        assert not _uses_custom_vjp(lambda v: F.relu(v), jnp.ones(3))
    assert jaxnet.default_impl() == "manual"


def test_functional_signature_is_the_reference_plus_impl():
    import inspect
    from jaxnet import ops
    params = list(inspect.signature(F.conv2d).parameters)
    assert params == list(inspect.signature(ops.conv2d).parameters) + ["impl"]
    assert inspect.signature(F.conv2d).parameters["impl"].kind is inspect.Parameter.KEYWORD_ONLY
