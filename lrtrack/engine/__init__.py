"""The library: range test, suggestion rules, probes, repeats, smoothing, schedules, steps, training.

Plain typed arguments and an observer interface (``on_step(step, metrics)``); imports neither
Hydra nor MLflow nor any other lrtrack package but :mod:`lrtrack.data`.
"""
