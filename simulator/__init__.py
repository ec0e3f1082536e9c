"""Sensor fleet simulator: realistic device signals published over MQTT at a chosen rate."""
