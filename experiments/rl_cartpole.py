"""CartPole-v1 (gymnax) with DQN, REINFORCE, A2C and PPO: 16 seeds of each trained at once, one
jitted program per algorithm (``jax.jit(jax.vmap(train))`` over the seeds' keys, the environments
vmapped inside).

    python -m experiments.rl_cartpole [--quick] [--smoke] [--out DIR] [--seed S] [--seeds K]
                                      [--algos dqn,reinforce,a2c,ppo] [--steps N]
                                      [--reinforce-episodes E] [--threshold R]

For each algorithm: the return curve (the mean return of the last 100 finished training episodes,
against env steps; mean and quartiles over seeds), which seeds reach the solved threshold (that
average >= 475 with at least 100 episodes finished), and the env steps and seconds it took. The
seeds train in lockstep, so the seconds to solve are the run's wall time (compile excluded) times
the fraction of its iterations done when the seed crossed the threshold: the time of the 16-seed
program on this CPU, not of one seed alone. Training episodes are the agents' own (epsilon-greedy
for DQN, sampled actions for the policy-gradient agents), no separate greedy evaluation.

Agents (``jaxnet.rl``): DQN (8 envs, double DQN, buffer 10,000, batch 128, target copy every 250
iterations, epsilon 1 -> 0.05 over a quarter of the run, Adam 2.5e-4, 10,000 steps before the first
update); REINFORCE with a learned baseline (8 whole episodes an iteration, Adam 2.5e-3); A2C (8
envs x 16 steps, n-step returns, Adam 7e-4); PPO (4 envs x 128 steps, GAE 0.95, clip 0.2, 4
epochs x 4 minibatches, Adam 2.5e-4); Adam rates decay linearly to 0 for the policy-gradient
agents; MLPs 64-64 (tanh for the policy gradients, ReLU for DQN) built from ``jaxnet.nn``.

Budgets per seed: 500,000 env steps for DQN, A2C, PPO (``--steps``) and 2,400 episodes for
REINFORCE (``--reinforce-episodes``); ``--quick``: 100,000 steps and 480 episodes; ``--smoke``: 2
seeds, about 200 steps each, tiny networks.

Outputs in ``--out``: ``results.json``, ``returns.png`` (return curves, mean and quartile band over
seeds, and the steps each solved seed needed).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from experiments._common import Timer, fail, figure, finish, gymnax_env, parse_args, save_figure, sized

NAME = "rl_cartpole"
DESCRIPTION = "CartPole-v1: DQN, REINFORCE, A2C and PPO, 16 seeds each trained at once with vmap."
ALGOS = ("dqn", "reinforce", "a2c", "ppo")
ENV = "CartPole-v1"


def _extra(parser) -> None:
    parser.add_argument("--algos", default=",".join(ALGOS), help="comma-separated subset of " + ",".join(ALGOS))
    parser.add_argument("--seeds", type=int, default=None, help="seeds per algorithm (default 16; smoke 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps per seed for DQN, A2C and PPO (default 500000; quick 100000)")
    parser.add_argument("--reinforce-episodes", type=int, default=None,
                        help="REINFORCE's episodes per seed (default 2400; quick 480)")
    parser.add_argument("--threshold", type=float, default=475.0, help="solved: average return of 100 episodes")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def configs(args, steps, episodes):
    """{algo: (module, config)} for the run's size."""
    from jaxnet.rl import dqn, pg

    smoke = args.smoke
    hidden = (16,) if smoke else (64, 64)
    out = {}
    if smoke:
        out["dqn"] = (dqn, dqn.DQNConfig(num_envs=4, iterations=50, log_every=10, buffer_size=100, batch_size=16,
                                         learning_starts=40, target_every=10, hidden=hidden))
        out["reinforce"] = (pg, pg.PGConfig(algo="reinforce", num_envs=2, num_steps=100, iterations=2, lr=2.5e-3,
                                            hidden=hidden))
        out["a2c"] = (pg, pg.PGConfig(algo="a2c", num_envs=2, num_steps=8, iterations=12, lr=7e-4, gae_lambda=1.0,
                                      hidden=hidden))
        out["ppo"] = (pg, pg.PGConfig(algo="ppo", num_envs=2, num_steps=16, iterations=6, epochs=2, minibatches=2,
                                      hidden=hidden))
        return out
    log_every = 250 if steps >= 8 * 250 * 20 else max(1, steps // (8 * 20))
    it = max(log_every, (steps // 8) // log_every * log_every)
    out["dqn"] = (dqn, dqn.DQNConfig(num_envs=8, iterations=it, log_every=log_every, buffer_size=10_000,
                                     batch_size=128, lr=2.5e-4, learning_starts=min(10_000, steps // 10),
                                     target_every=250, hidden=hidden))
    out["reinforce"] = (pg, pg.PGConfig(algo="reinforce", num_envs=8, num_steps=500, iterations=max(1, episodes // 8),
                                        lr=2.5e-3, hidden=hidden))
    out["a2c"] = (pg, pg.PGConfig(algo="a2c", num_envs=8, num_steps=16, iterations=max(1, steps // 128), lr=7e-4,
                                  gae_lambda=1.0, hidden=hidden))
    out["ppo"] = (pg, pg.PGConfig(algo="ppo", num_envs=4, num_steps=128, iterations=max(1, steps // 512), lr=2.5e-4,
                                  hidden=hidden))
    return out


CURVE_POINTS = 100


def thin(a, points=CURVE_POINTS):
    """``a[:, idx]`` at ``points`` evenly spaced logged indices (all when fewer), the last included."""
    K = a.shape[1]
    idx = np.unique(np.linspace(0, K - 1, min(points, K)).round().astype(int))
    return a[:, idx]


def solved_at(returns, episodes, threshold):
    """Per seed, the first logged index where >= 100 episodes finished and their mean return is >=
    ``threshold`` (-1 where never). returns, episodes: (seeds, logs)."""
    ok = (np.nan_to_num(returns, nan=-np.inf) >= threshold) & (episodes >= 100)
    return np.where(ok.any(1), ok.argmax(1), -1)


def run_algo(name, module, cfg, env, env_params, keys, threshold):
    import jax

    train = module.make_train(env, env_params, cfg)
    fn = jax.jit(jax.vmap(train))
    with Timer() as tc:
        compiled = fn.lower(keys).compile()
    with Timer() as tr:
        _, m = compiled(keys)
        m = jax.tree.map(np.asarray, jax.block_until_ready(m))
    ret, eps, steps = m["return"].astype(float), m["episodes"], m["steps"].astype(np.int64)
    K = ret.shape[1]
    at = solved_at(ret, eps, threshold)
    solved = at >= 0
    solve_steps = [int(steps[i, at[i]]) if solved[i] else None for i in range(len(at))]
    solve_s = [round(tr.elapsed * (at[i] + 1) / K, 2) if solved[i] else None for i in range(len(at))]
    total = int(steps[:, -1].sum())
    final = ret[:, -1]
    ok = [s for s in solve_steps if s is not None]
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg._asdict().items()},
        "seeds": int(len(at)), "compile_s": round(tc.elapsed, 2), "train_s": round(tr.elapsed, 2),
        "env_steps_total": total, "env_steps_per_s": round(total / max(tr.elapsed, 1e-9), 1),
        # the curves at (at most) CURVE_POINTS logged points, the last one included (the solved
        # steps and seconds above come from every logged point)
        "logged_points": int(K), "steps": thin(steps).tolist(), "return": thin(ret).tolist(),
        "episodes": thin(eps).tolist(),
        "final_return_mean": float(np.nanmean(final)) if np.isfinite(final).any() else None,
        "final_return_std": float(np.nanstd(final)) if np.isfinite(final).any() else None,
        "solved": int(solved.sum()), "solve_steps": solve_steps, "solve_seconds": solve_s,
        "median_solve_steps": float(np.median(ok)) if ok else None,
        "median_solve_seconds": float(np.median([s for s in solve_s if s is not None])) if ok else None,
    }


def _band(steps, ret, grid):
    """Each seed's curve interpolated onto ``grid`` (NaN outside its range)."""
    out = np.full((len(ret), len(grid)), np.nan)
    for i in range(len(ret)):
        ok = np.isfinite(ret[i])
        if ok.sum() >= 1:
            out[i] = np.interp(grid, steps[i][ok], ret[i][ok], left=np.nan, right=np.nan)
    return out


def _plot(path, res, threshold, title):
    fig = figure((12, 4.2))
    ax = fig.add_subplot(1, 2, 1)
    colors = {"dqn": "C0", "reinforce": "C1", "a2c": "C2", "ppo": "C3"}
    for name, r in res.items():
        steps, ret = np.asarray(r["steps"], float), np.asarray(r["return"], float)
        grid = np.linspace(0, steps[:, -1].max(), 200)
        b = _band(steps, ret, grid)
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = np.nanmean(b, 0), np.nanpercentile(b, 25, 0), np.nanpercentile(b, 75, 0)
        ax.plot(grid, mean, color=colors.get(name), label=f"{name} ({r['solved']}/{r['seeds']} solved)")
        ax.fill_between(grid, lo, hi, color=colors.get(name), alpha=0.2)
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"solved: {threshold:g}")
    ax.set_xlabel("env steps (per seed)")
    ax.set_ylabel("mean return, last 100 episodes")
    ax.set_title("mean over seeds, 25-75% band", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    for i, (name, r) in enumerate(res.items()):
        s = [v for v in r["solve_steps"] if v is not None]
        ax.scatter(s, [i] * len(s), color=colors.get(name), alpha=0.7)
        ax.text(0, i + 0.25, f"{len(s)}/{r['seeds']}", fontsize=8)
    ax.set_yticks(range(len(res)))
    ax.set_yticklabels(list(res))
    ax.set_xlim(0, max(np.asarray(r["steps"])[:, -1].max() for r in res.values()) * 1.05)
    ax.set_ylim(-0.5, len(res) - 0.2)
    ax.set_xlabel("env steps to solve (each dot a seed; count solved / seeds)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, title)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    bad = [a for a in algos if a not in ALGOS]
    if not algos or bad or len(set(algos)) != len(algos):
        _fail(f"--algos must be distinct names from {','.join(ALGOS)} (got {args.algos!r})")
    seeds = args.seeds if args.seeds is not None else sized(args, 16, 16, 2)
    steps = args.steps if args.steps is not None else sized(args, 500_000, 100_000)
    episodes = args.reinforce_episodes if args.reinforce_episodes is not None else sized(args, 2400, 480)
    if seeds < 1:
        _fail(f"--seeds must be >= 1 (got {seeds})")
    if steps < 1280 or episodes < 8:
        _fail(f"--steps must be >= 1280 and --reinforce-episodes >= 8 (got {steps}, {episodes})")
    if not math.isfinite(args.threshold):
        _fail(f"--threshold must be finite (got {args.threshold})")
    import jax
    from tqdm.auto import tqdm

    env, env_params = gymnax_env(args, ENV)
    keys = jax.random.split(jax.random.key(args.seed), seeds)
    cfgs = configs(args, steps, episodes)
    res = {}
    for name in tqdm(algos, desc=NAME, disable=args.quick):
        module, cfg = cfgs[name]
        res[name] = run_algo(name, module, cfg, env, env_params, keys, args.threshold)
        r = res[name]
        print(f"{name}: {r['solved']}/{seeds} solved, final return {r['final_return_mean']}, train {r['train_s']} s, "
              f"compile {r['compile_s']} s", flush=True)
    results = {"env": ENV, "seeds": seeds, "threshold": args.threshold, "budget_steps": steps,
               "reinforce_episodes": episodes, "algos": res,
               "claims": {f"{n}_solved_seeds": r["solved"] for n, r in res.items()}}
    _plot(f"{args.out}/returns.png", res, args.threshold,
          f"{ENV}: {seeds} seeds per algorithm, trained at once (jit + vmap)")
    rows = [[n, f"{r['solved']}/{r['seeds']}",
             r["median_solve_steps"] if r["median_solve_steps"] is not None else "-",
             r["median_solve_seconds"] if r["median_solve_seconds"] is not None else "-",
             r["final_return_mean"] if r["final_return_mean"] is not None else float("nan"),
             r["final_return_std"] if r["final_return_std"] is not None else float("nan"),
             r["env_steps_per_s"], r["train_s"], r["compile_s"]] for n, r in res.items()]
    return finish(args, results, ["algo", "solved", "median steps", "median s", "final mean", "final std",
                                  "steps/s", "train s", "compile s"], rows, f"{NAME}: {ENV}, {seeds} seeds each")


if __name__ == "__main__":
    main()
