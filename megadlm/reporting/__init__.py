"""Experiment reports: collate runs and sweeps into tables and plots (`megadlm report`)."""
