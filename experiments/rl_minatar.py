"""PPO on one MinAtar game (gymnax's Breakout-MinAtar by default) within a CPU time budget, against
the uniformly random policy.

    python -m experiments.rl_minatar [--quick] [--smoke] [--out DIR] [--seed S] [--env GAME]
                                     [--seeds K] [--steps N] [--num-envs E]

PPO from ``jaxnet.rl.pg`` (the CartPole experiment's agent): 64 environments x 128 steps a
rollout, GAE 0.95, clip 0.2, 4 epochs x 8 minibatches, Adam 5e-4 decaying to 0, entropy 0.01, an
MLP 128-128 (tanh, from ``jaxnet.nn``) on the flattened 10x10xC observation; ``--seeds``
seeds trained at once (vmap), the whole run one jitted program. The baseline is the random
policy's mean episode return on the same game (a jitted, vmapped rollout of 64 environments).
Default budget: 5,000,000 env steps per seed, 2 seeds (11.3 minutes on this 2-core CPU, shared,
within the issue's 20); ``--quick``:
500,000 steps, 2 seeds; ``--smoke``: 2 seeds, a few hundred steps, a tiny network.

Outputs in ``--out``: ``results.json``, ``returns.png`` (the mean return of the last 100 finished
episodes against env steps, each seed, and the random policy's).
"""
from __future__ import annotations

import functools

import numpy as np

from experiments._common import Timer, fail, figure, finish, gymnax_env, parse_args, save_figure, sized

NAME = "rl_minatar"
DESCRIPTION = "PPO on a MinAtar game within 20 CPU minutes, against the random policy."
GAMES = ("Breakout-MinAtar", "SpaceInvaders-MinAtar", "Freeway-MinAtar", "Asterix-MinAtar")


def _extra(parser) -> None:
    parser.add_argument("--env", choices=GAMES, default="Breakout-MinAtar")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per seed (default 5000000; quick 500000)")
    parser.add_argument("--num-envs", type=int, default=None, help="environments per seed (default 64)")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def random_policy_return(env, env_params, key, num_envs=64, steps=2000):
    """Mean return of the episodes the uniformly random policy finishes in ``steps`` steps of
    ``num_envs`` environments (one jitted scan)."""
    import jax

    from jaxnet.rl.loop import reset_envs, stats_init, stats_update, step_envs

    n_act = env.action_space(env_params).n

    @jax.jit
    def run(key):
        _, state = reset_envs(env, env_params, key, num_envs)

        def body(c, k):
            state, ret, count, stats = c
            k_a, k_e = jax.random.split(k)
            a = jax.random.randint(k_a, (num_envs,), 0, n_act)
            _, state, r, d, _, _ = step_envs(env, env_params, k_e, state, a)
            ep = stats.ep_return + r
            return (state, ret + (ep * d).sum(), count + d.sum(), stats_update(stats, r, d)), None

        (_, ret, count, _), _ = jax.lax.scan(body, (state, 0.0, 0, stats_init(num_envs)),
                                             jax.random.split(key, steps))
        return ret / jax.numpy.maximum(count, 1), count

    ret, count = run(key)
    return float(ret), int(count)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    seeds = args.seeds if args.seeds is not None else 2
    steps = args.steps if args.steps is not None else sized(args, 5_000_000, 500_000)
    N = args.num_envs if args.num_envs is not None else sized(args, 64, 64, 4)
    T = 8 if args.smoke else 128
    if seeds < 1 or N < 1:
        _fail(f"--seeds and --num-envs must be >= 1 (got {seeds}, {N})")
    if not args.smoke and steps < N * T:
        _fail(f"--steps must be >= num_envs x 128 = {N * T} (got {steps})")
    import jax

    from jaxnet.rl import pg

    env, env_params = gymnax_env(args, args.env)
    if args.smoke:
        cfg = pg.PGConfig(algo="ppo", num_envs=N, num_steps=T, iterations=4, epochs=1, minibatches=2, hidden=(8,))
    else:
        cfg = pg.PGConfig(algo="ppo", num_envs=N, num_steps=T, iterations=max(1, steps // (N * T)), lr=5e-4,
                          epochs=4, minibatches=8, hidden=(128, 128))
    keys = jax.random.split(jax.random.key(args.seed), seeds)
    fn = jax.jit(jax.vmap(pg.make_train(env, env_params, cfg)))
    with Timer() as tc:
        compiled = fn.lower(keys).compile()
    with Timer() as tr:
        _, m = compiled(keys)
        m = jax.tree.map(np.asarray, jax.block_until_ready(m))
    with Timer() as trand:
        rand_ret, rand_eps = random_policy_return(env, env_params, jax.random.key(args.seed + 1),
                                                  num_envs=N, steps=sized(args, 2000, 2000, 20))
    ret, st = m["return"].astype(float), m["steps"]
    final = ret[:, -1]
    results = {
        "env": args.env, "algo": "ppo", "seeds": seeds, "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                                 for k, v in cfg._asdict().items()},
        "env_steps_per_seed": int(st[0, -1]), "compile_s": round(tc.elapsed, 2), "train_s": round(tr.elapsed, 2),
        "cpu_minutes": round(tr.elapsed / 60, 2), "env_steps_per_s": round(float(st[:, -1].sum()) / tr.elapsed, 1),
        "steps": st.tolist(), "return": ret.tolist(), "episodes": m["episodes"].tolist(),
        "final_return_per_seed": final.tolist(),
        "final_return_mean": float(np.nanmean(final)) if np.isfinite(final).any() else None,
        "random_policy_return": rand_ret, "random_policy_episodes": rand_eps,
    }
    results["claims"] = {"ppo_beats_random": bool(np.isfinite(final).all() and final.min() > rand_ret)}
    fig = figure((6.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    for i in range(seeds):
        ax.plot(st[i], ret[i], label=f"PPO seed {i}")
    ax.axhline(rand_ret, color="k", ls=":", label=f"random policy: {rand_ret:.2f}")
    ax.set_xlabel("env steps (per seed)")
    ax.set_ylabel("mean return, last 100 episodes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, f"{args.out}/returns.png", f"{args.env}: PPO, {seeds} seeds at once, {tr.elapsed / 60:.1f} min")
    rows = [["ppo", int(st[0, -1]), results["final_return_mean"] if results["final_return_mean"] is not None
             else float("nan"), rand_ret, results["env_steps_per_s"], tr.elapsed, tc.elapsed]]
    return finish(args, results, ["algo", "steps/seed", "final return", "random", "steps/s", "train s", "compile s"],
                  rows, f"{NAME}: {args.env}, {seeds} seeds")


if __name__ == "__main__":
    main()
