"""Metrics: pure functions on arrays (classifier.py, mia.py, stats.py), the one-forward-pass evaluation
(evaluate.py) and the registered bindings (suite.py). Importing this package loads nothing heavy."""
