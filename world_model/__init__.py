"""DeepVerse world model: 4D geometry, codec, MM-DiT, flow matching, memory and rollout."""
from world_model.presets import PRESETS, build, config

__all__ = ["PRESETS", "build", "config"]
