"""Policy gradients: REINFORCE with a baseline, advantage actor-critic (A2C) and PPO.

The losses are pure functions of pytrees: ``params = {"actor": ..., "critic": ...}`` (two
:func:`jaxnet.rl.loop.mlp` networks: logits over the actions, a scalar value), a ``batch`` dict of
arrays, a :class:`PGConfig`; each returns ``(loss, aux)``. :func:`make_train` builds the whole
training run, ``train(key) -> (params, metrics)``, one jittable function (rollouts as ``lax.scan``
over time with the environments vmapped, updates, iterations as an outer ``lax.scan``); vmap it
over keys for seeds (:func:`jaxnet.rl.loop.train_seeds`).

Time-major conventions: rollouts are (T, N) (steps, environments); ``done[t]`` is true when the
episode ended with the reward ``reward[t]`` (the next observation belongs to a new episode). The
policy-gradient agents treat a time-limit end like a terminal one (no bootstrap: CartPole-v1's
500-step cap), as most reference implementations do; DQN bootstraps through it.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnet.rl.loop import (apply_mlp, init_mlp, mlp, reset_envs, stats_init, stats_mean, stats_update,
                            step_envs)

__all__ = ["PGConfig", "discounted_returns", "gae", "log_prob_entropy", "ppo_clip_objective", "reinforce_loss",
           "a2c_loss", "ppo_loss", "make_train", "ALGOS"]

ALGOS = ("reinforce", "a2c", "ppo")


class PGConfig(NamedTuple):
    algo: str = "ppo"             # "reinforce", "a2c" or "ppo"
    num_envs: int = 4
    num_steps: int = 128          # rollout length (REINFORCE: the longest episode, e.g. 500)
    iterations: int = 100         # rollouts (and updates) per training run
    lr: float = 2.5e-4
    anneal_lr: bool = True        # linear decay to 0 over the run
    gamma: float = 0.99
    gae_lambda: float = 0.95      # A2C with 1.0: n-step returns bootstrapped from the critic
    clip: float = 0.2             # PPO's ratio clip
    epochs: int = 4               # PPO: passes over each rollout
    minibatches: int = 4          # PPO: minibatches per pass
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: tuple = (64, 64)
    normalize_adv: bool = True


def _check(cfg: PGConfig):
    if cfg.algo not in ALGOS:
        raise ValueError(f"pg.make_train: algo must be one of {ALGOS}, got {cfg.algo!r}")
    for name in ("num_envs", "num_steps", "iterations", "epochs", "minibatches"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"pg.make_train: {name} must be a positive int, got {v!r}")
    if cfg.algo == "ppo" and (cfg.num_envs * cfg.num_steps) % cfg.minibatches:
        raise ValueError(f"pg.make_train: num_envs * num_steps = {cfg.num_envs * cfg.num_steps} must be divisible "
                         f"by minibatches = {cfg.minibatches}")
    if not (cfg.lr > 0 and 0 < cfg.gamma <= 1 and 0 <= cfg.gae_lambda <= 1 and cfg.clip > 0):
        raise ValueError(f"pg.make_train: need lr > 0, gamma in (0, 1], gae_lambda in [0, 1], clip > 0; got "
                         f"lr={cfg.lr}, gamma={cfg.gamma}, gae_lambda={cfg.gae_lambda}, clip={cfg.clip}")


def discounted_returns(rewards, dones, gamma, last_value=0.0):
    """G_t = r_t + gamma (1 - done_t) G_{t+1}, G_T = ``last_value``. (T, ...) -> (T, ...)."""
    if rewards.shape != dones.shape:
        raise ValueError(f"discounted_returns: rewards {rewards.shape} and dones {dones.shape} must match")
    last = jnp.broadcast_to(jnp.asarray(last_value, rewards.dtype), rewards.shape[1:])

    def back(g, x):
        r, d = x
        g = r + gamma * (1.0 - d) * g
        return g, g

    _, G = jax.lax.scan(back, last, (rewards, dones.astype(rewards.dtype)), reverse=True)
    return G


def gae(rewards, values, dones, last_value, gamma, lam):
    """Generalised advantage estimation. rewards, values, dones (T, N); last_value (N,) the value
    of the observation after the last step. delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t,
    A_t = delta_t + gamma lam (1 - d_t) A_{t+1}. Returns (advantages, returns = A + V), (T, N)."""
    if not rewards.shape == values.shape == dones.shape or last_value.shape != rewards.shape[1:]:
        raise ValueError(f"gae: rewards {rewards.shape}, values {values.shape}, dones {dones.shape} must match "
                         f"and last_value {last_value.shape} be their shape without the time axis")
    nd = 1.0 - dones.astype(rewards.dtype)
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    deltas = rewards + gamma * nd * next_values - values

    def back(a, x):
        delta, m = x
        a = delta + gamma * lam * m * a
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros_like(last_value), (deltas, nd), reverse=True)
    return adv, adv + values


def log_prob_entropy(logits, actions):
    """Categorical log pi(a|s) and entropy. logits (B, A), actions (B,) int -> (B,), (B,)."""
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, actions[:, None].astype(jnp.int32), axis=1)[:, 0]
    return logp, -(jnp.exp(logp_all) * logp_all).sum(-1)


def ppo_clip_objective(logp, old_logp, adv, clip):
    """PPO's clipped surrogate (to maximise): mean(min(rho A, clip(rho, 1-eps, 1+eps) A)),
    rho = exp(logp - old_logp). All (B,) -> scalar."""
    rho = jnp.exp(logp - old_logp)
    return jnp.mean(jnp.minimum(rho * adv, jnp.clip(rho, 1.0 - clip, 1.0 + clip) * adv))


def _normalize(adv, mask=None, on=True):
    if not on:
        return adv
    if mask is None:
        return (adv - adv.mean()) / (adv.std() + 1e-8)
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (adv * mask).sum() / n
    std = jnp.sqrt((((adv - mean) * mask) ** 2).sum() / n)
    return (adv - mean) / (std + 1e-8)


def _heads(nets, params, obs):
    actor, critic = nets
    return apply_mlp(actor, params["actor"], obs), apply_mlp(critic, params["critic"], obs)[:, 0]


def reinforce_loss(params, nets, batch, cfg: PGConfig):
    """REINFORCE with a learned baseline: -mean(log pi(a|s) (G - b(s))) + vf_coef mean((G - b(s))^2)
    - ent_coef entropy, over the live steps (``batch["mask"]``). batch: obs (B, D), action (B,),
    ret (B,) the Monte-Carlo return, mask (B,) float."""
    logits, v = _heads(nets, params, batch["obs"])
    logp, ent = log_prob_entropy(logits, batch["action"])
    m = batch["mask"]
    n = jnp.maximum(m.sum(), 1.0)
    adv = _normalize(jax.lax.stop_gradient(batch["ret"] - v), m, cfg.normalize_adv)
    pg = -(logp * adv * m).sum() / n
    vf = (((batch["ret"] - v) ** 2) * m).sum() / n
    entropy = (ent * m).sum() / n
    return pg + cfg.vf_coef * vf - cfg.ent_coef * entropy, {"pg": pg, "vf": vf, "entropy": entropy}


def a2c_loss(params, nets, batch, cfg: PGConfig):
    """Advantage actor-critic: -mean(log pi(a|s) A) + vf_coef mean((R - V(s))^2) - ent_coef entropy.
    batch: obs (B, D), action (B,), adv (B,), ret (B,) (GAE / n-step targets from the rollout)."""
    logits, v = _heads(nets, params, batch["obs"])
    logp, ent = log_prob_entropy(logits, batch["action"])
    adv = _normalize(batch["adv"], None, cfg.normalize_adv)
    pg = -jnp.mean(logp * adv)
    vf = jnp.mean((batch["ret"] - v) ** 2)
    return pg + cfg.vf_coef * vf - cfg.ent_coef * ent.mean(), {"pg": pg, "vf": vf, "entropy": ent.mean()}


def ppo_loss(params, nets, batch, cfg: PGConfig):
    """PPO: -clipped surrogate + vf_coef mean((R - V)^2) - ent_coef entropy. batch: obs, action,
    logp (the behaviour policy's log-probabilities), adv, ret, all (B, ...)."""
    logits, v = _heads(nets, params, batch["obs"])
    logp, ent = log_prob_entropy(logits, batch["action"])
    adv = _normalize(batch["adv"], None, cfg.normalize_adv)
    surr = ppo_clip_objective(logp, batch["logp"], adv, cfg.clip)
    vf = jnp.mean((batch["ret"] - v) ** 2)
    return -surr + cfg.vf_coef * vf - cfg.ent_coef * ent.mean(), {"pg": -surr, "vf": vf, "entropy": ent.mean()}


def _updates_per_iteration(cfg):
    return cfg.epochs * cfg.minibatches if cfg.algo == "ppo" else 1


def make_train(env, env_params, cfg: PGConfig):
    """``train(key) -> (params, metrics)``: ``cfg.iterations`` rollouts and updates of ``cfg.algo``.

    metrics (each (iterations,)): ``return`` the mean return of the last 100 finished episodes
    (NaN before the first), ``episodes`` finished so far, ``steps`` env steps so far (REINFORCE
    counts only the live steps of its episodes), ``loss``.
    """
    _check(cfg)
    n_act = env.action_space(env_params).n
    obs_shape = env.observation_space(env_params).shape
    nets = (mlp(n_act, cfg.hidden), mlp(1, cfg.hidden))
    n_updates = cfg.iterations * _updates_per_iteration(cfg)
    lr = optax.linear_schedule(cfg.lr, 0.0, n_updates) if cfg.anneal_lr else cfg.lr
    opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(lr, eps=1e-5))
    loss_fn = {"reinforce": reinforce_loss, "a2c": a2c_loss, "ppo": ppo_loss}[cfg.algo]
    grad_fn = jax.value_and_grad(lambda p, b: loss_fn(p, nets, b, cfg), has_aux=True)
    N, T = cfg.num_envs, cfg.num_steps

    def sgd(params, opt_state, batch):
        (loss, _), g = grad_fn(params, batch)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    def rollout(params, obs, env_state, stats, key, reinforce):
        def step(c, k):
            obs, env_state, stats, live = c
            k_act, k_env = jax.random.split(k)
            logits, v = _heads(nets, params, obs)
            a = jax.random.categorical(k_act, logits)
            logp, _ = log_prob_entropy(logits, a)
            obs2, env_state, r, d, _, _ = step_envs(env, env_params, k_env, env_state, a)
            stats = stats_update(stats, r, d, live if reinforce else None)
            tr = {"obs": obs, "action": a, "logp": logp, "value": v, "reward": r, "done": d,
                  "mask": live.astype(jnp.float32)}
            live = live & ~d if reinforce else live
            return (obs2, env_state, stats, live), tr

        (obs, env_state, stats, _), traj = jax.lax.scan(
            step, (obs, env_state, stats, jnp.ones(N, bool)), jax.random.split(key, T))
        return obs, env_state, stats, traj

    def flat(x):
        return x.reshape((-1,) + x.shape[2:])

    def iteration(c, _):
        params, opt_state, obs, env_state, stats, key = c
        key, k_roll, k_reset, k_upd = jax.random.split(key, 4)
        if cfg.algo == "reinforce":                     # whole episodes from fresh environments
            obs, env_state = reset_envs(env, env_params, k_reset, N)
            stats = stats._replace(ep_return=jnp.zeros_like(stats.ep_return),
                                   ep_length=jnp.zeros_like(stats.ep_length))
            obs, env_state, stats, traj = rollout(params, obs, env_state, stats, k_roll, True)
            ret = discounted_returns(traj["reward"], traj["done"], cfg.gamma)
            batch = {"obs": flat(traj["obs"]), "action": flat(traj["action"]), "ret": flat(ret),
                     "mask": flat(traj["mask"])}
            params, opt_state, loss = sgd(params, opt_state, batch)
        else:
            obs, env_state, stats, traj = rollout(params, obs, env_state, stats, k_roll, False)
            last_v = apply_mlp(nets[1], params["critic"], obs)[:, 0]
            adv, ret = gae(traj["reward"], traj["value"], traj["done"], last_v, cfg.gamma, cfg.gae_lambda)
            batch = {"obs": flat(traj["obs"]), "action": flat(traj["action"]), "logp": flat(traj["logp"]),
                     "adv": flat(adv), "ret": flat(ret)}
            if cfg.algo == "a2c":
                params, opt_state, loss = sgd(params, opt_state, batch)
            else:
                B = N * T
                mb = B // cfg.minibatches

                def epoch(c, k):
                    params, opt_state = c
                    perm = jax.random.permutation(k, B)
                    shuf = jax.tree.map(lambda x: x[perm].reshape((cfg.minibatches, mb) + x.shape[1:]), batch)

                    def minibatch(c, b):
                        p, o, loss = sgd(*c, b)
                        return (p, o), loss

                    (params, opt_state), losses = jax.lax.scan(minibatch, (params, opt_state), shuf)
                    return (params, opt_state), losses.mean()

                (params, opt_state), losses = jax.lax.scan(epoch, (params, opt_state),
                                                           jax.random.split(k_upd, cfg.epochs))
                loss = losses.mean()
        m = {"return": stats_mean(stats), "episodes": stats.episodes, "steps": stats.steps, "loss": loss}
        return (params, opt_state, obs, env_state, stats, key), m

    def train(key):
        k_a, k_c, k_env, key = jax.random.split(key, 4)
        params = {"actor": init_mlp(nets[0], k_a, obs_shape), "critic": init_mlp(nets[1], k_c, obs_shape)}
        obs, env_state = reset_envs(env, env_params, k_env, N)
        carry = (params, opt.init(params), obs, env_state, stats_init(N), key)
        carry, metrics = jax.lax.scan(iteration, carry, None, length=cfg.iterations)
        return carry[0], metrics

    return train
