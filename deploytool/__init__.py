"""deploytool: compile PyTorch models into Python-free packages with Apache TVM."""

__version__ = "0.1.0"
