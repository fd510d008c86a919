"""Sweeps: sweep files, their plan, running each configuration in its own process."""
