"""Reinforcement learning on Gymnasium environments: DQN and PPO through the same Loop, run
directory and checkpoints as every other task (see common.py for what an RL epoch is)."""

from . import dqn, options, ppo  # noqa: F401  (register the tasks and their [env], [rl] sections)
