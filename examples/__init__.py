"""Runnable examples of mqcore and its client: run each with ``--help`` to start."""
