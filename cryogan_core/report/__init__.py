"""Plots and reports (PNG and PDF, matplotlib Agg)."""
