"""Optional integrations: lrtrack's range test where people already train, into lrtrack's MLflow layout.

- :mod:`lrtrack.integrations.lightning`: :class:`~lrtrack.integrations.lightning.LRRangeTest`, a
  Lightning callback (``pip install "lrtrack[lightning]"``);
- :mod:`lrtrack.integrations.transformers`: :func:`~lrtrack.integrations.transformers.range_test`
  for a Hugging Face ``Trainer`` (``pip install "lrtrack[transformers]"``).

Each runs the engine's range test with the default ``confirmed`` rule on the framework's own
step, optimizer and train dataloader, logs it as lrtrack's ``explore`` run (through the journal,
as the CLI does), and marks the framework's MLflow run as the ``final`` run linked to it. Only
:mod:`lrtrack.tracking` imports MLflow. Importing this package imports neither framework.
"""
