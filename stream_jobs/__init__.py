"""Faust stream jobs: windowed aggregates, anomaly alerts, latest device state in Redis."""
