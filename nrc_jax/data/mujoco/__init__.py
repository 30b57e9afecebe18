"""Offline expert imitation data for Swimmer-v5, Reacher-v5 and Hopper-v5 (x = observations, y = actions)."""
