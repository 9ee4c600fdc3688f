"""``python -m medray.doctor``: check this node before a job lands on it.

What the node is (Python, OS, CPU features, GPUs, libraries), and for every backend ×
precision × device whether it can run here — a tiny model built through medray's own
backend classes, run once and compared with torch fp32 — with the fix of each failure.
Needs neither Ray nor Hydra nor any optional backend.  ``medray.doctor.cluster`` runs the
cheap part on every node of a Ray cluster at a job's start.
"""

from medray.doctor.checks import Record, capability, diagnose, pairs

__all__ = ["Record", "capability", "diagnose", "pairs"]
