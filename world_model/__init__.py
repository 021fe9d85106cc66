"""DeepVerse world model: 4D geometry, codec, MM-DiT, flow matching, memory and rollout.

    >>> import world_model
    >>> model = world_model.load_pretrained()  # the shipped tiny model (or any save_pretrained directory)
    >>> model.frames_per_chunk, model.history_frames
    (4, 4)
"""
from world_model.model import load_pretrained
from world_model.presets import PRESETS, build, config

__all__ = ["PRESETS", "build", "config", "load_pretrained"]
