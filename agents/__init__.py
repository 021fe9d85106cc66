"""Agents that act in DeepVerse worlds: tasks the same in the true and the learned world (``agents.tasks``:
point goals, visual goals, held-out task seeds), model-predictive planners over imagined futures with the
learned world re-synced on the true frame, or the simulator as the oracle (``agents.planners``: CEM, MPPI,
``run_mpc``); SB3 training in imagination and evaluation come later."""
