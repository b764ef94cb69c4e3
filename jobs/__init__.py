"""RQ wiring and job functions."""
