"""The build: Relax pipelines for CPU and GPU targets, TIR lowering, the shared library."""
