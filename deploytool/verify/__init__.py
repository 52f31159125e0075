"""Verification: reference runners, output comparison and package validation."""

# The default bound on the scaled error max|out - ref| / max|ref|. Correct fp32 packages of the
# zoo measure at most about 2e-6 (benchmarks/RESULTS.md, "Validation"); a weight scaled by 1.001
# in one layer of any of them comes out above 1e-4. It lives here, not in comparison.py, so that
# the CLI shows it without importing numpy, which starts a thread: Ctrl-C must be held first.
DEFAULT_MAX_ERROR = 1e-4
