"""The regression gate: A/B of two revisions, and comparisons of result files."""
