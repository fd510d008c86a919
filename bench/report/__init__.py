"""Output: frames from result rows, terminal tables, the markdown report and its plots."""
