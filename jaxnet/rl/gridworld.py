"""Tabular RL on a small grid world: the MDP as arrays, value iteration and policy iteration as
``lax`` loops, tabular Q-learning as one ``lax.scan``.

The lecture's example: every step costs ``step_reward`` (-1), the goal cells are absorbing with
reward 0, so with ``gamma = 1`` the optimal value of a cell is minus its shortest-path distance
to the nearest goal, and the uniformly random policy's value is the (negated) expected number of
steps a random walk needs (Sutton & Barto's 4x4 example: -14, -18, -20, -22).

The MDP (:class:`MDP`, a NamedTuple, so a pytree):

* ``P``: (S, A, S) float, ``P[s, a, s']`` the transition probability (rows sum to 1);
* ``R``: (S, A) float, the expected reward of taking ``a`` in ``s``;
* ``terminal``: (S,) bool, absorbing states (``P[s, a, s] = 1``, ``R[s, a] = 0``);
* ``cells``: (S, 2) int32, each state's (row, col) in the layout (walls are not states).

Actions: 0 up, 1 down, 2 left, 3 right; moving into a wall or off the grid stays put.
Values are (S,) arrays, Q tables (S, A), deterministic policies (S,) int32 action indices,
stochastic policies (S, A) probabilities. Every function works under ``jit`` (the MDP is an
argument, its sizes are static through the array shapes); the dtype follows the MDP's arrays
(float64 when built under ``jax.enable_x64``).
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["MDP", "gridworld", "sutton_4x4", "LECTURE_MAZE", "bellman_backup", "bellman_residual",
           "value_iteration", "policy_evaluation", "policy_iteration", "greedy_policy", "q_learning",
           "uniform_policy", "shortest_path_distance", "ACTIONS"]

ACTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))   # up, down, left, right

# a small maze: '#' wall, 'G' goal, '.' free
LECTURE_MAZE = (
    "......#G",
    ".##...#.",
    ".#..#...",
    ".#.##.#.",
    "...#..#.",
    "#.....#.",
)


class MDP(NamedTuple):
    P: jnp.ndarray          # (S, A, S)
    R: jnp.ndarray          # (S, A)
    terminal: jnp.ndarray   # (S,) bool
    cells: jnp.ndarray      # (S, 2) int32


def gridworld(layout: Sequence[str], step_reward: float = -1.0, dtype=None) -> MDP:
    """The grid world of ``layout`` (rows of '.', '#' wall, 'G' goal) as an :class:`MDP`.

    Deterministic moves; every step from a non-goal cell earns ``step_reward``; goals absorb.
    ``dtype``: the float dtype of P and R (default JAX's default float).
    """
    rows = [str(r) for r in layout] if not isinstance(layout, str) else layout.strip().splitlines()
    if not rows or len({len(r) for r in rows}) != 1 or not rows[0]:
        raise ValueError(f"gridworld: layout must be equal-length non-empty rows, got lengths "
                         f"{[len(r) for r in rows]}")
    bad = sorted({c for r in rows for c in r} - set(".#G"))
    if bad:
        raise ValueError(f"gridworld: layout may contain only '.', '#', 'G', got {bad}")
    if not any("G" in r for r in rows):
        raise ValueError("gridworld: layout needs at least one goal cell 'G'")
    cells = [(i, j) for i, r in enumerate(rows) for j, c in enumerate(r) if c != "#"]
    index = {c: k for k, c in enumerate(cells)}
    S, A = len(cells), len(ACTIONS)
    P = np.zeros((S, A, S))
    R = np.zeros((S, A))
    terminal = np.array([rows[i][j] == "G" for i, j in cells])
    for s, (i, j) in enumerate(cells):
        for a, (di, dj) in enumerate(ACTIONS):
            if terminal[s]:
                P[s, a, s] = 1.0
                continue
            P[s, a, index.get((i + di, j + dj), s)] = 1.0
            R[s, a] = step_reward
    dtype = dtype or jnp.result_type(float)
    return MDP(jnp.asarray(P, dtype), jnp.asarray(R, dtype), jnp.asarray(terminal), jnp.asarray(cells, jnp.int32))


def sutton_4x4(dtype=None) -> MDP:
    """Sutton & Barto's 4x4 grid (example 4.1): goals in two opposite corners, reward -1 a step."""
    return gridworld(("G...", "....", "....", "...G"), dtype=dtype)


def _check_gamma(fn, gamma):
    if not isinstance(gamma, jax.core.Tracer) and not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"{fn}: gamma must be in (0, 1], got {gamma}")


def bellman_backup(mdp: MDP, V, gamma):
    """Q(s, a) = R(s, a) + gamma * sum_s' P(s, a, s') V(s'); (S,) -> (S, A)."""
    return mdp.R + gamma * jnp.einsum("ijk,k->ij", mdp.P, V)


def bellman_residual(mdp: MDP, V, gamma):
    """max_s |V(s) - max_a Q(s, a)|, the Bellman optimality equation's error (a scalar)."""
    return jnp.max(jnp.abs(V - bellman_backup(mdp, V, gamma).max(axis=1)))


def value_iteration(mdp: MDP, gamma=1.0, tol: float = 0.0, max_iters: int = 10_000):
    """V <- max_a [R + gamma P V] from V = 0 until the largest change is <= ``tol`` (a
    ``lax.while_loop``). Returns ``(V (S,), iterations (int32), last change)``.

    With ``tol=0`` and the deterministic -1-a-step grid the loop stops when V stops changing:
    after (longest shortest path + 1) sweeps, at V* exactly.
    """
    _check_gamma("value_iteration", gamma)
    V0 = jnp.zeros(mdp.R.shape[0], mdp.R.dtype)

    def cond(c):
        _, it, delta = c
        return (delta > tol) & (it < max_iters)

    def body(c):
        V, it, _ = c
        V_new = bellman_backup(mdp, V, gamma).max(axis=1)
        return V_new, it + 1, jnp.max(jnp.abs(V_new - V))

    return jax.lax.while_loop(cond, body, (V0, jnp.int32(0), jnp.asarray(jnp.inf, mdp.R.dtype)))


def uniform_policy(mdp: MDP):
    """The uniformly random policy, (S, A) probabilities."""
    S, A = mdp.R.shape
    return jnp.full((S, A), 1.0 / A, mdp.R.dtype)


def _as_probs(mdp, policy):
    if policy.ndim == 1:
        return jax.nn.one_hot(policy, mdp.R.shape[1], dtype=mdp.R.dtype)
    return policy


def policy_evaluation(mdp: MDP, policy, gamma=1.0):
    """V^pi exactly: the linear system V = r_pi + gamma P_pi V on the non-terminal states (terminal
    states have V = 0). ``policy``: (S,) actions or (S, A) probabilities. Returns (S,).

    With gamma = 1 the policy must reach a goal with probability 1 (else the system is singular).
    """
    _check_gamma("policy_evaluation", gamma)
    S, A = mdp.R.shape
    if policy.shape not in ((S,), (S, A)):
        raise ValueError(f"policy_evaluation: policy must have shape ({S},) or ({S}, {A}), got {policy.shape}")
    pi = _as_probs(mdp, policy)
    live = (~mdp.terminal).astype(mdp.R.dtype)
    r_pi = (pi * mdp.R).sum(1) * live
    P_pi = jnp.einsum("ij,ijk->ik", pi, mdp.P) * live[:, None] * live[None, :]
    # terminal rows become V = 0 (identity row, zero reward); their columns are dropped
    M = jnp.eye(S, dtype=mdp.R.dtype) - gamma * P_pi
    return jnp.linalg.solve(M, r_pi)


def greedy_policy(Q):
    """argmax_a Q(s, a) (first maximiser), (S, A) -> (S,) int32."""
    return jnp.argmax(Q, axis=-1).astype(jnp.int32)


def policy_iteration(mdp: MDP, gamma=1.0, max_iters: int = 100):
    """Policy iteration from the uniformly random policy: exact evaluation, greedy improvement
    (ties to the first maximiser), until the greedy policy stops changing (a ``lax.while_loop``).
    Returns ``(V (S,), policy (S,) int32, iterations (int32))``."""
    _check_gamma("policy_iteration", gamma)
    V0 = policy_evaluation(mdp, uniform_policy(mdp), gamma)
    pi0 = greedy_policy(bellman_backup(mdp, V0, gamma))

    def cond(c):
        _, _, it, changed = c
        return changed & (it < max_iters)

    def body(c):
        _, pi, it, _ = c
        V = policy_evaluation(mdp, pi, gamma)
        Q = bellman_backup(mdp, V, gamma)
        # keep the current action when it is still a maximiser (avoids cycling between ties)
        best = Q.max(axis=1)
        keep = jnp.take_along_axis(Q, pi[:, None], axis=1)[:, 0] >= best
        new = jnp.where(keep, pi, greedy_policy(Q))
        return V, new, it + 1, jnp.any(new != pi)

    V, pi, it, _ = jax.lax.while_loop(cond, body, (V0, pi0, jnp.int32(1), jnp.bool_(True)))
    return V, pi, it


def q_learning(mdp: MDP, key, *, steps: int, alpha=0.5, epsilon=0.2, gamma=1.0, max_episode_len: int = 200):
    """Tabular Q-learning with epsilon-greedy exploration (random tie-breaking), one ``lax.scan``
    of ``steps`` transitions. Episodes start in a uniformly random non-terminal state and end at
    a goal or after ``max_episode_len`` steps.

    Q <- Q + alpha (r + gamma (1 - done) max_a' Q(s', a') - Q(s, a)), Q starts at 0.
    Returns ``(Q (S, A), episode_return (steps,), episode_end (steps,) bool)``: the return of the
    episode that ended at each step (valid where ``episode_end``).
    """
    _check_gamma("q_learning", gamma)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"q_learning: steps must be a positive int, got {steps!r}")
    S, A = mdp.R.shape
    dtype = mdp.R.dtype
    live = (~mdp.terminal).astype(dtype)
    start_cdf = jnp.cumsum(live / live.sum())
    P_cdf = jnp.cumsum(mdp.P, axis=-1)

    def draw(cdf, u):                    # inverse-CDF sampling: the first index with cdf > u
        return jnp.minimum(jnp.sum(cdf <= u), cdf.shape[0] - 1).astype(jnp.int32)

    def step(carry, k):
        Q, s, t, ret = carry
        u = jax.random.uniform(k, (4 + A,), dtype)       # one draw a step: explore?, action, s', start, ties
        q = Q[s]
        a_greedy = jnp.argmax(jnp.where(q >= q.max(), u[4:], -1.0))   # a uniformly random maximiser
        a_rand = jnp.minimum((u[1] * A).astype(jnp.int32), A - 1)
        a = jnp.where(u[0] < epsilon, a_rand, a_greedy)
        s2 = draw(P_cdf[s, a], u[2])
        r = mdp.R[s, a]
        done = mdp.terminal[s2]
        target = r + gamma * jnp.where(done, 0.0, Q[s2].max())
        Q = Q.at[s, a].add(alpha * (target - Q[s, a]))
        ret = ret + r
        end = done | (t + 1 >= max_episode_len)
        s_new = jnp.where(end, draw(start_cdf, u[3]), s2)
        return (Q, s_new, jnp.where(end, 0, t + 1), jnp.where(end, 0.0, ret).astype(dtype)), (ret, end)

    k0, k = jax.random.split(key)
    s0 = draw(start_cdf, jax.random.uniform(k0, (), dtype))
    carry = (jnp.zeros((S, A), dtype), s0, jnp.int32(0), jnp.zeros((), dtype))
    (Q, _, _, _), (rets, ends) = jax.lax.scan(step, carry, jax.random.split(k, steps))
    return Q, rets, ends


def shortest_path_distance(mdp: MDP) -> np.ndarray:
    """Breadth-first search (NumPy, not jittable): the number of moves from each state to the
    nearest goal, (S,) float64 (inf where none is reachable). The closed form V* = -distance."""
    P = np.asarray(mdp.P)
    S = P.shape[0]
    dist = np.full(S, np.inf)
    queue = deque()
    for s in np.flatnonzero(np.asarray(mdp.terminal)):
        dist[s] = 0
        queue.append(s)
    pred = [set() for _ in range(S)]
    for s in range(S):
        for s2 in np.flatnonzero(P[s].max(axis=0) > 0):
            if s2 != s:
                pred[s2].add(s)
    while queue:
        s2 = queue.popleft()
        for s in pred[s2]:
            if dist[s] == np.inf and not np.asarray(mdp.terminal)[s]:
                dist[s] = dist[s2] + 1
                queue.append(s)
    return dist
