"""The measurement: settings, the timed loop, statistics, one run."""
