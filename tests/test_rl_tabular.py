"""jaxnet.rl.gridworld against closed forms: the -1-a-step grid world's V* is minus the shortest-path
distance and satisfies the Bellman optimality equation to 1e-10 (float64); Sutton & Barto's 4x4
random-policy values; value and policy iteration agree; Q-learning's greedy policy is optimal.

Each test compiles one small program (the MDPs are tiny, 16 and 38 states)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.rl import gridworld as gw

# Sutton & Barto, example 4.1 (figure 4.1): the uniformly random policy's values, gamma = 1
SUTTON_RANDOM = np.array([[0, -14, -20, -22],
                          [-14, -18, -20, -20],
                          [-20, -20, -18, -14],
                          [-22, -20, -14, 0]], float)


def _grid(mdp, values):
    cells = np.asarray(mdp.cells)
    out = np.full(cells.max(0) + 1, np.nan)
    out[cells[:, 0], cells[:, 1]] = np.asarray(values)
    return out


def test_mdp_arrays_are_a_proper_mdp():
    mdp = gw.gridworld(gw.LECTURE_MAZE)
    P = np.asarray(mdp.P)
    np.testing.assert_allclose(P.sum(-1), 1.0)
    term = np.asarray(mdp.terminal)
    assert term.sum() == 1 and np.all(np.asarray(mdp.R)[~term] == -1.0) and np.all(np.asarray(mdp.R)[term] == 0.0)
    # a wall keeps you in place: the top-left cell moving up or left stays put
    s = int(np.flatnonzero((np.asarray(mdp.cells) == [0, 0]).all(1))[0])
    assert P[s, 0, s] == 1.0 and P[s, 2, s] == 1.0


def test_value_iteration_is_minus_shortest_path_and_bellman_exact(x64):
    for layout in (gw.LECTURE_MAZE, ("G...", "....", "....", "...G")):
        mdp = gw.gridworld(layout)
        assert mdp.P.dtype == jnp.float64
        V, iters, delta = jax.jit(gw.value_iteration)(mdp, 1.0)
        dist = gw.shortest_path_distance(mdp)
        assert np.isfinite(dist).all()
        np.testing.assert_array_equal(np.asarray(V), -dist)
        assert float(gw.bellman_residual(mdp, V, 1.0)) <= 1e-10
        assert int(iters) == int(dist.max()) + 1 and float(delta) == 0.0   # stops when V stops changing


def test_value_iteration_discounted_bellman_residual(x64):
    mdp = gw.gridworld(gw.LECTURE_MAZE)
    V, _, _ = gw.value_iteration(mdp, 0.9, tol=1e-13)
    assert float(gw.bellman_residual(mdp, V, 0.9)) <= 1e-10
    d = gw.shortest_path_distance(mdp)
    np.testing.assert_allclose(np.asarray(V), -(1 - 0.9 ** d) / (1 - 0.9), rtol=0, atol=1e-10)  # geometric sum


def test_random_policy_values_match_sutton_and_barto(x64):
    mdp = gw.sutton_4x4()
    V = jax.jit(lambda m: gw.policy_evaluation(m, gw.uniform_policy(m), 1.0))(mdp)
    np.testing.assert_allclose(_grid(mdp, V), SUTTON_RANDOM, atol=1e-9)


def test_policy_iteration_agrees_with_value_iteration(x64):
    mdp = gw.gridworld(gw.LECTURE_MAZE)
    V_vi, _, _ = gw.value_iteration(mdp, 1.0)
    V_pi, pi, iters = jax.jit(gw.policy_iteration)(mdp, 1.0)
    np.testing.assert_allclose(np.asarray(V_pi), np.asarray(V_vi), atol=1e-10)
    # the policy is greedy w.r.t. V*: each action achieves the max of the backup
    Q = np.asarray(gw.bellman_backup(mdp, V_vi, 1.0))
    live = ~np.asarray(mdp.terminal)
    np.testing.assert_allclose(Q[np.arange(len(Q)), np.asarray(pi)][live], Q.max(1)[live], atol=1e-10)
    assert 1 <= int(iters) < 20


def test_q_learning_greedy_policy_is_optimal(x64):
    mdp = gw.gridworld(gw.LECTURE_MAZE)
    V, _, _ = gw.value_iteration(mdp, 1.0)
    Qstar = np.asarray(gw.bellman_backup(mdp, V, 1.0))
    Q, rets, ends = jax.jit(gw.q_learning, static_argnames=("steps", "max_episode_len"))(
        mdp, jax.random.key(0), steps=10_000, alpha=0.5, epsilon=0.3)
    greedy = np.asarray(gw.greedy_policy(Q))
    live = ~np.asarray(mdp.terminal)
    s = np.arange(len(greedy))
    np.testing.assert_allclose(Qstar[s, greedy][live], np.asarray(V)[live], atol=1e-9)
    # deterministic MDP, alpha 0.5: learned Q of the greedy actions converges to Q*
    np.testing.assert_allclose(np.asarray(Q)[s, greedy][live], np.asarray(V)[live], atol=0.5)
    assert np.asarray(ends).sum() > 100


def test_bad_inputs_raise_one_line_value_errors():
    with pytest.raises(ValueError, match="gridworld: layout needs at least one goal"):
        gw.gridworld(("...", "..."))
    with pytest.raises(ValueError, match="gridworld: layout may contain only"):
        gw.gridworld(("..x", "..G"))
    with pytest.raises(ValueError, match=r"gridworld: layout must be equal-length.*\[3, 2\]"):
        gw.gridworld(("..G", ".."))
    mdp = gw.sutton_4x4()
    with pytest.raises(ValueError, match="value_iteration: gamma must be in"):
        gw.value_iteration(mdp, 1.5)
    with pytest.raises(ValueError, match=r"policy_evaluation: policy must have shape \(16,\) or \(16, 4\)"):
        gw.policy_evaluation(mdp, np.zeros((3,), np.int32))
    with pytest.raises(ValueError, match="q_learning: steps must be a positive int"):
        gw.q_learning(mdp, jax.random.key(0), steps=0)
