"""DQN (Mnih et al. 2015) with a replay buffer (:mod:`jaxnet.rl.buffer`), a target network and
double DQN (van Hasselt et al. 2016), the whole run one jittable function.

``dqn_targets`` and ``dqn_loss`` are pure functions of arrays / pytrees; :func:`make_train` builds
``train(key) -> (params, metrics)``: each iteration steps every environment once (epsilon-greedy,
epsilon decaying linearly), writes the transitions into the ring buffer and takes one gradient
step on a sampled batch (once ``learning_starts`` env steps are in); the target network is
copied from the online one every ``target_every`` iterations.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnet.rl.buffer import buffer_add, buffer_init, buffer_sample
from jaxnet.rl.loop import (apply_mlp, init_mlp, mlp, reset_envs, stats_init, stats_mean, stats_update,
                            step_envs)

__all__ = ["DQNConfig", "dqn_targets", "dqn_loss", "make_train"]


class DQNConfig(NamedTuple):
    num_envs: int = 8
    iterations: int = 10_000       # vectorised env steps (num_envs env steps each), one update each
    log_every: int = 100           # iterations per recorded metric
    buffer_size: int = 10_000
    batch_size: int = 128
    lr: float = 2.5e-4
    gamma: float = 0.99
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_fraction: float = 0.25     # of the run's env steps, to decay epsilon
    learning_starts: int = 1_000   # env steps before the first update
    target_every: int = 100        # iterations between target-network copies
    double: bool = True
    max_grad_norm: float = 10.0
    hidden: tuple = (64, 64)


def dqn_targets(reward, done, q_next_target, q_next_online, gamma, double: bool):
    """TD targets r + gamma (1 - done) Q_target(s', a*). reward, done (B,); q_next_* (B, A).
    DQN: a* = argmax_a Q_target(s', a) (i.e. max_a Q_target); double DQN: a* = argmax_a
    Q_online(s', a), evaluated by the target network. Returns (B,)."""
    if q_next_target.shape != q_next_online.shape or q_next_target.shape[:1] != reward.shape:
        raise ValueError(f"dqn_targets: q_next_target {q_next_target.shape}, q_next_online {q_next_online.shape} "
                         f"must be (B, A) with B = len(reward) = {reward.shape}")
    a_star = jnp.argmax(q_next_online if double else q_next_target, axis=-1)
    q_next = jnp.take_along_axis(q_next_target, a_star[:, None], axis=1)[:, 0]
    return reward + gamma * (1.0 - done.astype(reward.dtype)) * q_next


def dqn_loss(params, target_params, net, batch, gamma, double: bool):
    """0.5 mean((Q(s, a) - y)^2), y = :func:`dqn_targets` (no gradient through y). batch: obs (B, D),
    action (B,), reward (B,), next_obs (B, D), done (B,). Returns (loss, mean Q(s, a))."""
    q = apply_mlp(net, params, batch["obs"])
    q_sa = jnp.take_along_axis(q, batch["action"][:, None].astype(jnp.int32), axis=1)[:, 0]
    y = dqn_targets(batch["reward"], batch["done"], apply_mlp(net, target_params, batch["next_obs"]),
                    apply_mlp(net, params, batch["next_obs"]), gamma, double)
    return 0.5 * jnp.mean((q_sa - jax.lax.stop_gradient(y)) ** 2), q_sa.mean()


def _check(cfg):
    for name in ("num_envs", "iterations", "log_every", "buffer_size", "batch_size", "target_every"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"dqn.make_train: {name} must be a positive int, got {v!r}")
    if cfg.iterations % cfg.log_every:
        raise ValueError(f"dqn.make_train: iterations = {cfg.iterations} must be a multiple of log_every = "
                         f"{cfg.log_every}")
    if cfg.num_envs > cfg.buffer_size or not (cfg.lr > 0 and 0 < cfg.gamma <= 1):
        raise ValueError(f"dqn.make_train: need num_envs <= buffer_size, lr > 0, gamma in (0, 1]; got "
                         f"num_envs={cfg.num_envs}, buffer_size={cfg.buffer_size}, lr={cfg.lr}, gamma={cfg.gamma}")


def make_train(env, env_params, cfg: DQNConfig):
    """``train(key) -> (params, metrics)``; metrics each (iterations // log_every,): ``return`` (mean
    of the last 100 finished episodes, NaN before the first), ``episodes``, ``steps``, ``loss``
    (mean over the logged block), ``epsilon``."""
    _check(cfg)
    n_act = env.action_space(env_params).n
    obs_shape = env.observation_space(env_params).shape
    net = mlp(n_act, cfg.hidden, activation="relu")
    opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.lr))
    grad_fn = jax.value_and_grad(lambda p, t, b: dqn_loss(p, t, net, b, cfg.gamma, cfg.double), has_aux=True)
    N = cfg.num_envs
    decay_steps = max(1.0, cfg.eps_fraction * cfg.iterations * N)

    def epsilon(steps):
        frac = jnp.clip(steps / decay_steps, 0.0, 1.0)
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    def iteration(c, _):
        params, target, opt_state, buf, obs, env_state, stats, it, key = c
        key, k_eps, k_rand, k_env, k_smp = jax.random.split(key, 5)
        eps = epsilon(stats.steps)
        greedy = jnp.argmax(apply_mlp(net, params, obs), axis=-1)
        explore = jax.random.uniform(k_eps, (N,)) < eps
        a = jnp.where(explore, jax.random.randint(k_rand, (N,), 0, n_act), greedy)
        obs2, env_state, r, d, term, final_obs = step_envs(env, env_params, k_env, env_state, a)
        stats = stats_update(stats, r, d)
        # the target bootstraps from the state the step reached unless the episode TERMINATED
        # (a time-limit end is not a terminal state)
        buf = buffer_add(buf, {"obs": obs, "action": a, "reward": r, "next_obs": final_obs, "done": term})
        batch = buffer_sample(buf, k_smp, cfg.batch_size)
        (loss, _), g = grad_fn(params, target, batch)
        upd, new_opt = opt.update(g, opt_state, params)
        learn = stats.steps >= cfg.learning_starts
        pick = lambda new, old: jax.tree.map(lambda x, y: jnp.where(learn, x, y), new, old)  # noqa: E731
        params, opt_state = pick(optax.apply_updates(params, upd), params), pick(new_opt, opt_state)
        it = it + 1
        copy = (it % cfg.target_every) == 0
        target = jax.tree.map(lambda o, t: jnp.where(copy, o, t), params, target)
        return (params, target, opt_state, buf, obs2, env_state, stats, it, key), (loss * learn, eps)

    def block(c, _):
        c, (loss, eps) = jax.lax.scan(iteration, c, None, length=cfg.log_every)
        stats = c[6]
        return c, {"return": stats_mean(stats), "episodes": stats.episodes, "steps": stats.steps,
                   "loss": loss.mean(), "epsilon": eps[-1]}

    def train(key):
        k_p, k_env, key = jax.random.split(key, 3)
        params = init_mlp(net, k_p, obs_shape)
        obs, env_state = reset_envs(env, env_params, k_env, N)
        example = {"obs": obs[0], "action": jnp.int32(0), "reward": jnp.float32(0), "next_obs": obs[0],
                   "done": jnp.bool_(False)}
        carry = (params, params, opt.init(params), buffer_init(example, cfg.buffer_size), obs, env_state,
                 stats_init(N), jnp.int32(0), key)
        carry, metrics = jax.lax.scan(block, carry, None, length=cfg.iterations // cfg.log_every)
        return carry[0], metrics

    return train
