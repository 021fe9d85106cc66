"""The learned world: ``LearnedWorld`` and its config (``world``), the envs ``DeepVerse-v0`` (``env``) and its
batched ``vector_env``, and the loaders of start frames (``starts``)."""
