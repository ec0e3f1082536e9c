"""MQTT -> Kafka gateway: validate, normalize, forward keyed by device id, at least once."""
