"""Checks of the harness itself: overhead, performance goals, the GPU check."""
