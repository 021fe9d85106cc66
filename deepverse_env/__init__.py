"""DeepVerse as a Gymnasium world: the ground-truth simulator and the learned world model.

Importing the package registers the environments (``gym.make("deepverse_env:DeepVerse-v0")`` imports it
for you):

- ``DeepVerseSim-v0``: ``deepverse_env.sim.env.DeepVerseSimEnv``, with the native batched
  ``deepverse_env.sim.vector_env.DeepVerseSimVectorEnv`` as its vector entry point
  (``gym.make_vec("DeepVerseSim-v0", num_envs=N, vectorization_mode="vector_entry_point")``).
- ``DeepVerse-v0``: ``deepverse_env.learned.env.DeepVerseEnv``, the world model's rollout with the same
  spaces and step, with ``deepverse_env.learned.vector_env.DeepVerseVectorEnv`` (one batched model call
  for N worlds) as its vector entry point. Its default checkpoint is the shipped model.
"""
from gymnasium.envs.registration import register

register(
    id="DeepVerseSim-v0",
    entry_point="deepverse_env.sim.env:DeepVerseSimEnv",
    vector_entry_point="deepverse_env.sim.vector_env:DeepVerseSimVectorEnv",
    max_episode_steps=500,
    disable_env_checker=True,  # as for DeepVerse-v0 below: a rejected first reset must not break the env
)
register(
    id="DeepVerse-v0",
    entry_point="deepverse_env.learned.env:DeepVerseEnv",
    vector_entry_point="deepverse_env.learned.vector_env:DeepVerseVectorEnv",
    max_episode_steps=500,
    # No PassiveEnvChecker: gymnasium's (1.4) marks the first reset checked before running it, so when that
    # reset raises (a bad options["image"]) it keeps no reset data and the first step after a valid reset
    # fails inside the wrapper (TypeError unpacking None); the env itself is sound. The tests run the full
    # gymnasium.utils.env_checker.check_env on it instead.
    disable_env_checker=True,
)
