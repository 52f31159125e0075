"""Verification: reference runners, output comparison and package validation."""
