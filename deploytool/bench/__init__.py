"""Benchmarks: a package timed beside ONNX Runtime and TorchScript, and the report."""
