"""The train wing: teacher pairs (``fluxsr pairs``) and Flow Trajectory Distillation (``fluxsr distill``).

Open ``step.py`` first (one training step, the algorithm on one screen) and ``losses.py``; then
``pairs.py`` (the teacher's data), ``loop.py`` (accelerate), ``checkpoints.py`` (resume, export).
Imports the upscale, quality, degrade and model wings.
"""
