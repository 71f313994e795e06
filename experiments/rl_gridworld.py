"""The lecture's grid world (reward -1 a step): value iteration, policy iteration, the random
policy, and tabular Q-learning, all checked against closed forms.

    python -m experiments.rl_gridworld [--quick] [--smoke] [--out DIR] [--seed S]
                                       [--layout maze|sutton] [--gamma G] [--q-steps N]
                                       [--alpha A] [--epsilon E]

Everything runs in float64 (``jax.enable_x64``). The grid world's optimal value is minus the
shortest-path distance to the goal (breadth-first search, NumPy); the experiment reports how
far value iteration's V* is from it, its Bellman optimality residual max_s |V - max_a Q|, whether
policy iteration reaches the same values, the uniformly random policy's exact values (a linear
solve; Sutton & Barto's 4x4 numbers with ``--layout sutton``), and in how many states Q-learning's
greedy policy picks an optimal action (Q*(s, greedy) = V*(s)).

Outputs in ``--out``: ``results.json``; ``values.png``: V of the random policy and V* with the
optimal policy's arrows, then Q-learning's episode returns (moving average) beside the optimal and
the random policy's expected return from a random start. ``--quick``: 20,000 Q-learning steps
(default 100,000); ``--smoke``: 3,000.
"""
from __future__ import annotations

import sys

import numpy as np

from experiments._common import Timer, figure, finish, parse_args, save_figure, sized

NAME = "rl_gridworld"
DESCRIPTION = "Grid world: value/policy iteration vs closed forms, the random policy, tabular Q-learning."


def _extra(parser) -> None:
    parser.add_argument("--layout", choices=("maze", "sutton"), default="maze",
                        help="maze: a 6x8 maze with walls; sutton: Sutton & Barto's 4x4 grid (default: maze)")
    parser.add_argument("--gamma", type=float, default=1.0, help="discount in (0, 1] (default 1)")
    parser.add_argument("--q-steps", type=int, default=None, help="Q-learning steps (default 100000; quick 20000)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Q-learning step size in (0, 1]")
    parser.add_argument("--epsilon", type=float, default=0.3, help="exploration rate in [0, 1]")


def _check(args, q_steps):
    problems = []
    if not 0 < args.gamma <= 1:
        problems.append(f"--gamma must be in (0, 1] (got {args.gamma})")
    if q_steps < 1:
        problems.append(f"--q-steps must be >= 1 (got {q_steps})")
    if not 0 < args.alpha <= 1 or not 0 <= args.epsilon <= 1:
        problems.append(f"--alpha must be in (0, 1] and --epsilon in [0, 1] (got {args.alpha}, {args.epsilon})")
    if problems:
        print(f"experiments.{NAME}: {problems[0]}", file=sys.stderr)
        raise SystemExit(2)


def _grid(cells, values):
    out = np.full(cells.max(0) + 1, np.nan)
    out[cells[:, 0], cells[:, 1]] = values
    return out


def _plot(path, mdp, V_rand, V_star, pi, curve, opt_ret, rand_ret, title):
    cells = np.asarray(mdp.cells)
    term = np.asarray(mdp.terminal)
    fig = figure((13, 3.8))
    for i, (V, name) in enumerate(((V_rand, "random policy: $V^{\\pi}$"), (V_star, "optimal: $V^*$ and $\\pi^*$"))):
        ax = fig.add_subplot(1, 3, i + 1)
        g = _grid(cells, V)
        im = ax.imshow(g, cmap="viridis")
        for (r, c), v in zip(cells, V):
            label = f"{v:.0f}" if abs(v) >= 10 or v == round(v) else f"{v:.1f}"
            ax.text(c, r - 0.25 * i, label, ha="center", va="center", fontsize=7, color="w")
        if i == 1:
            arrows = ((0, -0.3), (0, 0.3), (-0.3, 0), (0.3, 0))
            for (r, c), a, t in zip(cells, pi, term):
                if not t:
                    dx, dy = arrows[a]
                    ax.annotate("", (c + dx, r + dy), (c, r), arrowprops=dict(arrowstyle="->", color="r", lw=0.8))
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.04)
    ax = fig.add_subplot(1, 3, 3)
    ax.plot(np.arange(1, len(curve) + 1), curve, label="Q-learning, epsilon-greedy (moving avg. of 50 episodes)")
    ax.axhline(opt_ret, color="g", ls="--", label=f"optimal policy: {opt_ret:.2f}")
    ax.axhline(rand_ret, color="r", ls=":", label=f"random policy: {rand_ret:.1f}")
    ax.set_xlabel("episode")
    ax.set_ylabel("return (random start)")
    ax.set_ylim(min(rand_ret, np.nanmin(curve)) * 1.1, 0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def _solve(mdp, key, gamma, q_steps, alpha, epsilon):
    """Every computation as one jitted program (one compile): value iteration and its Bellman
    residual, policy iteration, the random policy's values, Q-learning, Q* = backup(V*)."""
    import jax

    from jaxnet.rl import gridworld as gw

    @jax.jit
    def run(mdp, key):
        V, it, _ = gw.value_iteration(mdp, gamma)
        V_pi, pi, pi_it = gw.policy_iteration(mdp, gamma)
        V_rand = gw.policy_evaluation(mdp, gw.uniform_policy(mdp), gamma)
        Q, rets, ends = gw.q_learning(mdp, key, steps=q_steps, alpha=alpha, epsilon=epsilon, gamma=gamma)
        return (V, it, gw.bellman_residual(mdp, V, gamma), V_pi, pi, pi_it, V_rand, Q, rets, ends,
                gw.bellman_backup(mdp, V, gamma))

    return run(mdp, key)


def main(argv=None) -> dict:
    import jax

    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    q_steps = args.q_steps if args.q_steps is not None else sized(args, 100_000, 20_000, 3_000)
    _check(args, q_steps)
    from jaxnet.rl import gridworld as gw

    with jax.enable_x64(True), Timer() as t:
        mdp = gw.gridworld(gw.LECTURE_MAZE if args.layout == "maze" else ("G...", "....", "....", "...G"))
        live = ~np.asarray(mdp.terminal)
        dist = gw.shortest_path_distance(mdp)
        V, vi_iters, residual, V_pi, pi, pi_iters, V_rand, Q, rets, ends, Qstar = _solve(
            mdp, jax.random.key(args.seed), args.gamma, q_steps, args.alpha, args.epsilon)
        residual = float(residual)
        V, V_pi, V_rand, Q, pi, Qstar = (np.asarray(a) for a in (V, V_pi, V_rand, Q, pi, Qstar))
    closed = -dist if args.gamma == 1 else -(1 - args.gamma ** dist) / (1 - args.gamma)
    s = np.arange(len(V))
    greedy = Q.argmax(1)
    q_optimal = np.abs(Qstar[s, greedy] - V)[live] <= 1e-9
    ep_returns = np.asarray(rets)[np.asarray(ends)]
    k = min(50, max(1, len(ep_returns)))
    curve = np.convolve(ep_returns, np.ones(k) / k, mode="valid") if len(ep_returns) else np.array([np.nan])
    opt_ret, rand_ret = float(V[live].mean()), float(V_rand[live].mean())
    results = {
        "layout": args.layout, "gamma": args.gamma, "states": int(len(V)), "float": "float64",
        "value_iteration": {"iterations": int(vi_iters), "bellman_residual": residual,
                            "max_abs_diff_vs_minus_distance": float(np.abs(V - closed).max()),
                            "V_star": V.tolist()},
        "policy_iteration": {"iterations": int(pi_iters),
                             "max_abs_diff_vs_value_iteration": float(np.abs(V_pi - V).max()),
                             "policy": pi.tolist()},
        "random_policy": {"V": V_rand.tolist(), "mean_return_random_start": rand_ret},
        "optimal_mean_return_random_start": opt_ret,
        "q_learning": {"steps": q_steps, "alpha": args.alpha, "epsilon": args.epsilon, "episodes": int(len(ep_returns)),
                       "greedy_optimal_states": int(q_optimal.sum()), "live_states": int(live.sum()),
                       "last_50_episode_mean_return": float(ep_returns[-50:].mean()) if len(ep_returns) else None},
        "compute_s": round(t.elapsed, 2),
    }
    results["claims"] = {
        "bellman_residual_le_1e-10": residual <= 1e-10,
        "V_star_equals_minus_shortest_path": float(np.abs(V - closed).max()) <= 1e-10,
        "policy_iteration_equals_value_iteration": float(np.abs(V_pi - V).max()) <= 1e-10,
        "q_learning_greedy_policy_optimal": bool(q_optimal.all()),
    }
    _plot(f"{args.out}/values.png", mdp, V_rand, V, pi, curve, opt_ret, rand_ret,
          f"grid world ({args.layout}, reward -1 a step, gamma {args.gamma:g})")
    rows = [["value iteration", int(vi_iters), f"{residual:.1e}", f"{np.abs(V - closed).max():.1e}", opt_ret],
            ["policy iteration", int(pi_iters), "", f"{np.abs(V_pi - closed).max():.1e}", float(V_pi[live].mean())],
            ["random policy", "", "", "", rand_ret],
            [f"Q-learning ({q_steps} steps)", "", "", f"{int(q_optimal.sum())}/{int(live.sum())} states optimal",
             results["q_learning"]["last_50_episode_mean_return"] or float("nan")]]
    return finish(args, results, ["method", "iterations", "Bellman residual", "vs -distance", "mean return"], rows,
                  f"{NAME}: {args.layout}, {len(V)} states")


if __name__ == "__main__":
    main()
