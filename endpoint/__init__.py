"""Globus Compute endpoint configuration."""
