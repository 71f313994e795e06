"""The pieces every jitted training loop shares: environments vmapped over a batch, the running
episode statistics (the last 100 finished episodes' returns), the networks, and ``train_seeds``
(``jit(vmap(train))`` over random seeds).

Environments are gymnax's (``env, env_params = gymnax.make("CartPole-v1")``); ``env.step``
resets an environment automatically when its episode ends, so a rollout is a plain ``lax.scan``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["EpisodeStats", "stats_init", "stats_update", "stats_mean", "reset_envs", "step_envs",
           "mlp", "apply_mlp", "init_mlp", "train_seeds", "WINDOW"]

WINDOW = 100     # "solved" is judged on the average return of the last 100 episodes


class EpisodeStats(NamedTuple):
    """Per-environment running return/length (N,), the last ``WINDOW`` finished episodes' returns
    (a ring, (WINDOW,)), how many episodes finished (int32) and how many env steps were taken."""
    ep_return: jnp.ndarray
    ep_length: jnp.ndarray
    recent: jnp.ndarray
    episodes: jnp.ndarray
    steps: jnp.ndarray


def stats_init(num_envs: int) -> EpisodeStats:
    z = jnp.zeros(num_envs, jnp.float32)
    return EpisodeStats(z, jnp.zeros(num_envs, jnp.int32), jnp.zeros(WINDOW, jnp.float32), jnp.int32(0),
                        jnp.int32(0))


def stats_update(stats: EpisodeStats, reward, done, live=None) -> EpisodeStats:
    """Account one vectorised step: ``reward`` (N,), ``done`` (N,) bool; ``live`` (N,) bool masks
    environments whose step does not count (REINFORCE's finished episodes)."""
    live = jnp.ones_like(done) if live is None else live
    ret = stats.ep_return + jnp.where(live, reward, 0.0)
    length = stats.ep_length + live.astype(jnp.int32)
    fin = done & live
    slot = stats.episodes + jnp.cumsum(fin) - 1
    idx = jnp.where(fin, slot % WINDOW, WINDOW)                 # WINDOW: out of range, dropped
    recent = stats.recent.at[idx].set(ret, mode="drop")
    return EpisodeStats(jnp.where(fin, 0.0, ret), jnp.where(fin, 0, length), recent,
                        stats.episodes + fin.sum().astype(jnp.int32), stats.steps + live.sum().astype(jnp.int32))


def stats_mean(stats: EpisodeStats):
    """The mean return of the last min(episodes, WINDOW) finished episodes (NaN before the first)."""
    n = jnp.minimum(stats.episodes, WINDOW)
    mask = jnp.arange(WINDOW) < n
    return jnp.where(n > 0, jnp.sum(jnp.where(mask, stats.recent, 0.0)) / jnp.maximum(n, 1), jnp.nan)


def reset_envs(env, env_params, key, num_envs: int):
    """(obs (N, ...), state) of ``num_envs`` fresh environments."""
    return jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_envs), env_params)


def step_envs(env, env_params, key, state, action):
    """One step of every environment (gymnax resets an environment whose episode ended):
    ``(obs, state, reward (N,), done (N,) bool, terminated (N,) bool, final_obs)``. ``done`` is
    terminated or truncated (the time limit); ``final_obs`` the observation the step reached,
    before any reset (``obs`` is the new episode's first one where ``done``)."""
    n = action.shape[0]
    obs, state, reward, term, trunc, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
        jax.random.split(key, n), state, action, env_params)
    term = term.astype(bool)
    return obs, state, reward.astype(jnp.float32), term | trunc.astype(bool), term, info["final_observation"]


def mlp(out: int, hidden=(64, 64), activation: str = "tanh"):
    """A jaxnet model (``jaxnet.nn.fully_connected_net``: affine - activation blocks, then an affine
    head with small (0.01) initial weights, the near-uniform start policy gradients like); the
    reference ops (autodiff backward)."""
    from jaxnet.nn import fully_connected_net
    return fully_connected_net(tuple(hidden), out, init="xavier" if activation == "tanh" else "he",
                               activation=activation, impl="autodiff")


def apply_mlp(model, params, x):
    """``model``'s output for a batch ``x`` (B, ...) -> (B, out) (no state, eval mode)."""
    return model.apply(params, {name: {} for name in model.names}, x, train=False)[0]


def init_mlp(model, key, in_shape):
    """``model``'s params for inputs of shape ``in_shape`` (one observation, no batch axis)."""
    return model.init(key, (1,) + tuple(in_shape))[0]


def train_seeds(train, keys):
    """``jax.jit(jax.vmap(train))(keys)``: every seed's whole training run as one program."""
    return jax.jit(jax.vmap(train))(keys)
