"""Agents that act in DeepVerse worlds: SB3 training in imagination, planners, evaluation."""
