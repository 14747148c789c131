"""Residency: which models are in memory. A pure decision core plus an executor that acts."""
