"""Analytical model statistics (parameters, multiply-adds)."""
