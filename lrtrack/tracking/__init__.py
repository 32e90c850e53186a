"""Tracking: the only package that imports MLflow.

The job appends operations to a journal; delivery applies them to the store (the relay while the
job runs, ``python -m lrtrack.deliver`` afterwards); the run layout names stages, tags and artifact
paths and reads runs back for ``lr_from``, resume, sweeps and the report. Imports the engine, never
the application.
"""
