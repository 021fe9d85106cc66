"""DeepVerse as a Gymnasium world: the ground-truth simulator (and, later, the learned world model env).

Importing the package registers the environments:

- ``DeepVerseSim-v0``: ``deepverse_env.sim.env.DeepVerseSimEnv``, with the native batched
  ``deepverse_env.sim.vector_env.DeepVerseSimVectorEnv`` as its vector entry point
  (``gym.make_vec("DeepVerseSim-v0", num_envs=N, vectorization_mode="vector_entry_point")``).
"""
from gymnasium.envs.registration import register

register(
    id="DeepVerseSim-v0",
    entry_point="deepverse_env.sim.env:DeepVerseSimEnv",
    vector_entry_point="deepverse_env.sim.vector_env:DeepVerseSimVectorEnv",
    max_episode_steps=500,
)
