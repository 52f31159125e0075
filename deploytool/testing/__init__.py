"""Models and programs for tests, benchmarks and make demo."""
