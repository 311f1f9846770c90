"""Prometheus exporter for Qoder Cloud Agents deployment runs."""

__version__ = "0.1.0"
