"""The ground-truth world: procedural scenes (``world``), the batched ray caster (``raycast``), the agent's
motion (``agent``), and the Gymnasium envs (``env``, ``vector_env``)."""
