"""Machinery of bench/run.py: process management (proc), client driving
(client) and reporting (report). Standard library only."""
