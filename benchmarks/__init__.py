"""Timing scripts: each prints our time, a baseline measured in the same run, and the ratio."""
