"""Choosing among candidate classifiers by validation score within a time budget."""
