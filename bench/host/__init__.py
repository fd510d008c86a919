"""The machine: its identity, memory, huge pages, CPU contention and bandwidth ceiling."""
