"""Tuning with MetaSchedule: the database, trial measurement, the search."""
