"""The local stack: Mosquitto, Redis and a Kafka-wire broker on loopback, under supervisord."""
