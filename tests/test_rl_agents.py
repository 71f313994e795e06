"""jaxnet.rl's deep-agent pieces: the ring buffer's wrap-around, discounted returns and GAE against a
NumPy loop, PPO's clipped objective against a hand-computed value, double DQN's target (the online
network's argmax, evaluated by the target network), the episode statistics, and the jitted training
loop (same seed, same result; vmap over seeds equals running the seeds one by one).

Small shapes, one jitted program per test; the loop test runs DQN (its replay buffer, target network
and epsilon schedule inside the scan) on a 5-state chain with gymnax's interface (defined here: no
gymnax import), jitted and vmapped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.rl import buffer as rb
from jaxnet.rl import dqn, loop, pg


def test_ring_buffer_wraps_around_and_samples_filled_slots():
    example = {"x": np.zeros(2, np.float32), "a": np.int32(0)}
    buf = rb.buffer_init(example, 5)
    add = jax.jit(rb.buffer_add)
    items = lambda lo, n: {"x": np.stack([np.full(2, float(v), np.float32) for v in range(lo, lo + n)]),  # noqa: E731
                           "a": np.arange(lo, lo + n, dtype=np.int32)}
    buf = add(buf, items(0, 3))
    assert int(buf.ptr) == 3 and int(buf.size) == 3
    buf = add(buf, items(3, 3))          # 3, 4 fill the end, 5 wraps to slot 0
    assert int(buf.ptr) == 1 and int(buf.size) == 5
    np.testing.assert_array_equal(np.asarray(buf.data["a"]), [5, 1, 2, 3, 4])
    np.testing.assert_array_equal(np.asarray(buf.data["x"])[:, 0], [5, 1, 2, 3, 4])
    buf = add(buf, items(6, 3))          # 6, 7, 8 into slots 1, 2, 3: 4 and 5 are the oldest left
    np.testing.assert_array_equal(np.asarray(buf.data["a"]), [5, 6, 7, 8, 4])
    assert int(buf.ptr) == 4 and int(buf.size) == 5
    partial = add(rb.buffer_init(example, 5), items(10, 2))
    s = jax.jit(rb.buffer_sample, static_argnums=2)(partial, jax.random.key(0), 64)
    assert set(np.asarray(s["a"]).tolist()) == {10, 11}          # only filled slots are drawn
    np.testing.assert_array_equal(np.asarray(s["x"])[:, 1], np.asarray(s["a"]))
    with pytest.raises(ValueError, match="buffer_add: items need one leading batch size <= capacity 5"):
        rb.buffer_add(buf, items(0, 6))
    with pytest.raises(ValueError, match="buffer_init: capacity must be a positive int"):
        rb.buffer_init(example, 0)


def _np_returns_gae(r, v, d, last, gamma, lam):
    T, N = r.shape
    G, A = np.zeros((T, N)), np.zeros((T, N))
    for n in range(N):
        g, a = 0.0, 0.0
        for t in reversed(range(T)):
            g = r[t, n] + gamma * (1 - d[t, n]) * g
            v_next = last[n] if t == T - 1 else v[t + 1, n]
            delta = r[t, n] + gamma * (1 - d[t, n]) * v_next - v[t, n]
            a = delta + gamma * lam * (1 - d[t, n]) * a
            G[t, n], A[t, n] = g, a
    return G, A


def test_discounted_returns_and_gae_match_a_numpy_loop(x64):
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 9, 3, 0.9, 0.8
    r, v, last = rng.standard_normal((T, N)), rng.standard_normal((T, N)), rng.standard_normal(N)
    d = rng.random((T, N)) < 0.25
    d[4, 1] = True
    G_ref, A_ref = _np_returns_gae(r, v, d.astype(float), last, gamma, lam)
    G, (A, R) = jax.jit(lambda r, v, d, last: (pg.discounted_returns(r, d, gamma),
                                              pg.gae(r, v, d, last, gamma, lam)))(r, v, d, last)
    np.testing.assert_allclose(np.asarray(G), G_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(A), A_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(R), A_ref + v, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="gae: rewards"):
        pg.gae(r, v[:-1], d, last, gamma, lam)
    with pytest.raises(ValueError, match="discounted_returns: rewards"):
        pg.discounted_returns(r, d[:, :2], gamma)


def test_ppo_clip_and_double_dqn_target_by_hand():
    @jax.jit
    def both(logp, old, adv, r, done, qt, qo):
        return (pg.ppo_clip_objective(logp, old, adv, 0.2), dqn.dqn_targets(r, done, qt, qo, 0.5, True),
                dqn.dqn_targets(r, done, qt, qo, 0.5, False), pg.log_prob_entropy(qt, jnp.array([1, 0])))

    ratios = np.array([1.5, 0.5, 0.5, 1.5])
    adv = np.array([1.0, 1.0, -1.0, -1.0], np.float32)
    # min(rho A, clip(rho) A): 1.2 (clipped), 0.5, -0.8 (clipped), -1.5  ->  mean -0.15
    qt = np.array([[1.0, 5.0, 3.0], [2.0, 0.0, 4.0]], np.float32)    # target net at s'
    qo = np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)   # online net at s'
    r, done = np.array([1.0, 1.0], np.float32), np.array([False, True])
    surr, y_double, y_dqn, (logp, ent) = both(np.log(ratios).astype(np.float32), np.zeros(4, np.float32), adv, r, done,
                                              qt, qo)
    assert float(surr) == pytest.approx(-0.15, abs=1e-6)
    np.testing.assert_allclose(np.asarray(y_double), [1.0 + 0.5 * 1.0, 1.0], rtol=1e-6)   # online argmax 0 -> qt=1
    np.testing.assert_allclose(np.asarray(y_dqn), [1.0 + 0.5 * 5.0, 1.0], rtol=1e-6)      # max of the target net
    p = np.exp(qt - qt.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(logp), np.log(p[[0, 1], [1, 0]]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), -(p * np.log(p)).sum(1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"dqn_targets: q_next_target \(2, 3\), q_next_online \(2, 2\)"):
        dqn.dqn_targets(r, done, qt, qo[:, :2], 0.5, True)


def test_episode_statistics_keep_the_last_100_returns():
    @jax.jit
    def run(rewards, dones):
        def step(s, x):
            s = loop.stats_update(s, *x)
            return s, loop.stats_mean(s)
        return jax.lax.scan(step, loop.stats_init(2), (rewards, dones))

    rng = np.random.default_rng(1)
    T = 400
    rewards = rng.integers(1, 4, (T, 2)).astype(np.float32)
    dones = rng.random((T, 2)) < 0.3
    stats, means = run(rewards, dones)
    finished, running = [], np.zeros(2)
    ref_means = []
    for t in range(T):
        running += rewards[t]
        for n in range(2):
            if dones[t, n]:
                finished.append(running[n])
                running[n] = 0
        ref_means.append(np.mean(finished[-100:]) if finished else np.nan)
    assert int(stats.episodes) == len(finished) > 100 and int(stats.steps) == 2 * T
    np.testing.assert_allclose(np.asarray(means), ref_means, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(stats.ep_return), running)


class ChainEnv:
    """A 5-state chain with gymnax's interface (so the loop tests need neither gymnax nor its
    compile): the state is the position, the observation its one-hot, action 1 moves right, 0 left;
    reaching the right end ends the episode with reward 1 (auto-reset to 0), every 6th step truncates."""
    n = 5

    def _obs(self, pos):
        return jax.nn.one_hot(pos, self.n)

    def reset(self, key, params):
        state = (jnp.int32(0), jnp.int32(0))
        return self._obs(state[0]), state

    def step(self, key, state, action, params):
        pos, t = state
        pos = jnp.clip(pos + 2 * action - 1, 0, self.n - 1)
        slip = jax.random.uniform(key) < 0.1                       # randomness from the key
        pos = jnp.where(slip, jnp.maximum(pos - 1, 0), pos)
        term, trunc = pos == self.n - 1, t + 1 >= 6
        done = term | trunc
        new = (jnp.where(done, 0, pos), jnp.where(done, 0, t + 1))
        return (self._obs(new[0]), new, term.astype(jnp.float32), term, trunc,
                {"final_observation": self._obs(pos)})

    def action_space(self, params):
        return type("Discrete", (), {"n": 2})()

    def observation_space(self, params):
        return type("Box", (), {"shape": (self.n,)})()


@pytest.mark.parametrize("algo", ["dqn"])   # A2C ("a2c" here) costs ~6 CPU-s more; PPO runs in test_exp_rl_cartpole
def test_jitted_loop_is_reproducible_and_vmap_equals_seed_by_seed(algo):
    env = ChainEnv()
    if algo == "dqn":
        train = dqn.make_train(env, None, dqn.DQNConfig(num_envs=2, iterations=40, log_every=10, buffer_size=32,
                                                        batch_size=8, learning_starts=16, target_every=5, hidden=(8,)))
        per_log = 20
    else:
        train = pg.make_train(env, None, pg.PGConfig(algo="a2c", num_envs=2, num_steps=8, iterations=4, lr=1e-2,
                                                     hidden=(8,), gae_lambda=1.0))
        per_log = 16
    keys = jax.random.split(jax.random.key(3), 2)
    one = jax.jit(train)
    p0, m0 = one(keys[0])
    p0b, m0b = one(keys[0])
    p1, m1 = one(keys[1])
    jax.tree.map(np.testing.assert_array_equal, (p0, m0), (p0b, m0b))          # same seed, same run
    assert not np.array_equal(np.asarray(m0["loss"]), np.asarray(m1["loss"]))   # another seed, another run
    pv, mv = loop.train_seeds(train, keys)
    for i, (p, m) in enumerate(((p0, m0), (p1, m1))):
        np.testing.assert_array_equal(np.asarray(mv["steps"][i]), np.asarray(m["steps"]))
        np.testing.assert_array_equal(np.asarray(mv["episodes"][i]), np.asarray(m["episodes"]))
        np.testing.assert_allclose(np.asarray(mv["loss"][i]), np.asarray(m["loss"]), rtol=1e-4, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-4, atol=1e-6),
                     pv, p)
    assert np.asarray(m0["steps"]).tolist() == [per_log * (k + 1) for k in range(4)]
    assert int(m0["episodes"][-1]) >= 2 * 40 * (1 if algo == "dqn" else 0.8) // 6 - 2   # every 6 steps at least


def test_bad_configs_raise_one_line_value_errors():
    class FakeEnv:   # make_train checks its config before touching the environment
        pass
    with pytest.raises(ValueError, match="pg.make_train: algo must be one of"):
        pg.make_train(FakeEnv(), None, pg.PGConfig(algo="sarsa"))
    with pytest.raises(ValueError, match="must be divisible by minibatches = 3"):
        pg.make_train(FakeEnv(), None, pg.PGConfig(num_envs=4, num_steps=8, minibatches=3))
    with pytest.raises(ValueError, match="dqn.make_train: iterations = 150 must be a multiple of log_every = 100"):
        dqn.make_train(FakeEnv(), None, dqn.DQNConfig(iterations=150, log_every=100))


def test_reinforce_loss_by_hand(x64):
    """The loss's three terms on a tiny batch: a masked step counts nothing."""
    from jaxnet.rl.loop import init_mlp, mlp
    nets = (mlp(2, (3,)), mlp(1, (3,)))
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda k: {"actor": init_mlp(nets[0], k, (4,)), "critic": init_mlp(nets[1], k, (4,))},
                            jax.random.key(0))
    params = jax.tree.map(lambda a: rng.standard_normal(a.shape), shapes)
    batch = {"obs": rng.standard_normal((5, 4)), "action": np.array([0, 1, 1, 0, 1]),
             "ret": rng.standard_normal(5), "mask": np.array([1.0, 1.0, 1.0, 1.0, 0.0])}
    cfg = pg.PGConfig(algo="reinforce", vf_coef=0.5, ent_coef=0.01, normalize_adv=False)
    loss, aux = jax.jit(lambda p, b: pg.reinforce_loss(p, nets, b, cfg))(params, batch)

    def net(p, x):
        h = np.tanh(x @ p["fc1"]["w"] + p["fc1"]["b"])
        return h @ p["fc2"]["w"] + p["fc2"]["b"]
    logits, v = net(params["actor"], batch["obs"]), net(params["critic"], batch["obs"])[:, 0]
    logp_all = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    logp = logp_all[np.arange(5), batch["action"]][:4]
    adv = (batch["ret"] - v)[:4]
    ent = -(np.exp(logp_all) * logp_all).sum(1)[:4].mean()
    expected = -(logp * adv).mean() + 0.5 * (adv ** 2).mean() - 0.01 * ent
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    assert float(aux["entropy"]) == pytest.approx(ent, rel=1e-10)
