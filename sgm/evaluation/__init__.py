"""Scoring generated orbits against held-out procedural objects (``scripts/eval_demo.py``)."""
