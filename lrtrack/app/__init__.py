"""The application: the Hydra CLI, the config schema and its validation, the recipe (set up, range
test, bounds, train, finish), the sweep callback, the report and the notebook helpers. The only
package that sees a ``DictConfig``.
"""
