"""Metrics, result tables and plots, and the evaluate command."""
