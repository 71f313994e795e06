"""Reinforcement learning the jaxnet way: environment, agent and training loop in one jitted
program, vmapped over environments and over random seeds.

* :mod:`jaxnet.rl.gridworld`: the lecture's grid world (reward -1 a step) as arrays; value
  iteration and policy iteration as ``lax`` loops; tabular Q-learning as one ``lax.scan``.
* :mod:`jaxnet.rl.buffer`: a replay buffer as a pytree ring buffer.
* :mod:`jaxnet.rl.dqn`: DQN with a target network, double DQN.
* :mod:`jaxnet.rl.pg`: REINFORCE with a baseline, A2C, PPO; returns and GAE.
* :mod:`jaxnet.rl.loop`: vmapped environments (gymnax), episode statistics, the MLPs (built from
  ``jaxnet.nn``), :func:`train_seeds` (``jit(vmap(train))`` over keys).

Deep agents need ``gymnax`` (``pip install gymnax six``) for their environments.
"""
from jaxnet.rl import buffer, dqn, gridworld, loop, pg
from jaxnet.rl.buffer import ReplayBuffer, buffer_add, buffer_init, buffer_sample
from jaxnet.rl.loop import train_seeds

__all__ = ["gridworld", "buffer", "dqn", "pg", "loop", "ReplayBuffer", "buffer_init", "buffer_add", "buffer_sample",
           "train_seeds"]
