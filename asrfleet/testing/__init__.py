"""Helpers for tests and benchmarks, never imported by the product: models with random weights
built with the real classes (`random_models`)."""
