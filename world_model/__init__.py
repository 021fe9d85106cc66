"""DeepVerse world model: 4D geometry, codec, MM-DiT, flow matching, memory and rollout."""
