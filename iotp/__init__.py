"""Shared core of the IoT telemetry pipeline: settings, the reading schema, topic and channel names."""

__version__ = "0.1.0"
