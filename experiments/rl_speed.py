"""Environment steps per second: the fully jitted, vmapped loop against Python loops over the same
gymnax environments, measured side by side in one run (medians of repeats).

    python -m experiments.rl_speed [--quick] [--smoke] [--out DIR] [--seed S] [--env CartPole-v1]
                                   [--num-envs N] [--steps T] [--python-steps P] [--repeats R]

Three ways to step ``N`` environments with uniformly random actions (gymnax's ``env.step``, which
resets an environment whose episode ended):

* ``python``: a Python loop over time and over the environments, one jitted ``env.step`` call per
  environment per step (the way a gym-style loop drives environments); actions from NumPy;
* ``python_vmap``: a Python loop over time, one jitted call of ``vmap(env.step)`` per step;
* ``jit_scan``: the whole rollout one jitted program, ``lax.scan`` over time of ``vmap(env.step)``
  with the actions drawn inside (compile time reported apart, not counted).

Each is timed ``--repeats`` times after a warm-up call (compiles excluded); the table gives the
median env steps/s and the ratio to ``python``. Defaults: 64 environments, 2,000 jitted steps,
50 Python steps (the slow loop needs fewer to be timed), 5 repeats; ``--quick``: 32 envs, 1,000 /
20 steps, 3 repeats; ``--smoke``: 4 envs, 50 / 5 steps, 2 repeats.

Outputs in ``--out``: ``results.json``, ``speed.png`` (median steps/s per method, log scale).
"""
from __future__ import annotations

import functools
import time

import numpy as np

from experiments._common import fail, figure, finish, gymnax_env, parse_args, save_figure, sized

NAME = "rl_speed"
DESCRIPTION = "Env steps/s: the jitted, vmapped loop vs a Python loop over the same gymnax environments."
ENVS = ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Breakout-MinAtar")


def _extra(parser) -> None:
    parser.add_argument("--env", choices=ENVS, default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, default=None, help="environments (default 64; quick 32)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the jitted loops (default 2000)")
    parser.add_argument("--python-steps", type=int, default=None, help="steps of the Python loops (default 50)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5), medians reported")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def measure(env, env_params, N, T, T_py, repeats, seed):
    """{method: {"steps_per_s": [per repeat], "median": ...}} plus the jitted loop's compile time."""
    import jax
    import jax.numpy as jnp

    from jaxnet.rl.loop import reset_envs, step_envs

    n_act = env.action_space(env_params).n
    key = jax.random.key(seed)
    obs, state = reset_envs(env, env_params, key, N)
    rng = np.random.default_rng(seed)
    out = {}

    # python: one jitted env.step per environment per step
    step1 = jax.jit(env.step)
    states = [jax.tree.map(lambda x, i=i: x[i], state) for i in range(N)]
    keys = list(jax.random.split(key, N))

    def python_loop(states):
        for t in range(T_py):
            acts = rng.integers(0, n_act, N)
            for i in range(N):
                _, states[i], r, _, _, _ = step1(keys[i], states[i], int(acts[i]), env_params)
        jax.block_until_ready(r)
        return states

    # python_vmap: one jitted vmap(env.step) per step
    stepN = jax.jit(lambda k, s, a: step_envs(env, env_params, k, s, a)[:3])

    def python_vmap(state):
        for t in range(T_py):
            _, state, r = stepN(key, state, jnp.asarray(rng.integers(0, n_act, N), jnp.int32))
        jax.block_until_ready(r)
        return state

    # jit_scan: the whole rollout one program
    @jax.jit
    def rollout(key, state):
        def body(s, k):
            k_a, k_e = jax.random.split(k)
            a = jax.random.randint(k_a, (N,), 0, n_act)
            _, s, r, d, _, _ = step_envs(env, env_params, k_e, s, a)
            return s, r.sum()
        return jax.lax.scan(body, state, jax.random.split(key, T))

    t0 = time.perf_counter()
    jax.block_until_ready(rollout(key, state))
    compile_s = time.perf_counter() - t0
    python_loop(states)  # warm-up (compiles the one-env step)
    python_vmap(state)
    for name, fn, arg, steps in (("python", python_loop, states, T_py), ("python_vmap", python_vmap, state, T_py),
                                 ("jit_scan", lambda s: jax.block_until_ready(rollout(key, s)), state, T)):
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(arg)
            rates.append(N * steps / (time.perf_counter() - t0))
        out[name] = {"steps": steps, "num_envs": N, "steps_per_s": rates, "median": float(np.median(rates))}
    return out, compile_s


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    N = args.num_envs if args.num_envs is not None else sized(args, 64, 32, 4)
    T = args.steps if args.steps is not None else sized(args, 2000, 1000, 50)
    T_py = args.python_steps if args.python_steps is not None else sized(args, 50, 20, 5)
    R = args.repeats if args.repeats is not None else sized(args, 5, 3, 2)
    if min(N, T, T_py, R) < 1:
        _fail(f"--num-envs, --steps, --python-steps and --repeats must be >= 1 (got {N}, {T}, {T_py}, {R})")
    env, env_params = gymnax_env(args, args.env)
    res, compile_s = measure(env, env_params, N, T, T_py, R, args.seed)
    base = res["python"]["median"]
    for r in res.values():
        r["ratio_vs_python"] = r["median"] / base
    results = {"env": args.env, "num_envs": N, "repeats": R, "jit_scan_compile_s": round(compile_s, 2),
               "methods": res,
               "claims": {"jit_scan_over_python": res["jit_scan"]["ratio_vs_python"],
                          "jit_scan_over_python_vmap": res["jit_scan"]["median"] / res["python_vmap"]["median"]}}
    fig = figure((6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    names = list(res)
    ax.barh(names, [res[n]["median"] for n in names], color=["C1", "C2", "C0"])
    for i, n in enumerate(names):
        ax.text(res[n]["median"], i, f" {res[n]['median']:,.0f}/s (x{res[n]['ratio_vs_python']:.0f})", va="center",
                fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("env steps per second (median)")
    ax.grid(alpha=0.3, axis="x")
    save_figure(fig, f"{args.out}/speed.png", f"{args.env}: {N} environments, random actions")
    rows = [[n, r["steps"], r["median"], r["ratio_vs_python"]] for n, r in res.items()]
    return finish(args, results, ["method", "steps per env", "env steps/s (median)", "x python"], rows,
                  f"{NAME}: {args.env}, {N} envs, {R} repeats")


if __name__ == "__main__":
    main()
