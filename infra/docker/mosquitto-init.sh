#!/bin/sh
# docker-compose's Mosquitto: put the service accounts (passwords from the environment) into the password
# file, then run the broker. The file lives in the data volume, so device accounts added later with
#   docker-compose exec mosquitto mosquitto_passwd -b /mosquitto/data/passwd DEVICE_ID PASSWORD
#   docker-compose kill -s HUP mosquitto
# survive restarts. See docs/security.md.
set -eu
: "${MQTT_GATEWAY_PASSWORD:?set MQTT_GATEWAY_PASSWORD}"
: "${MQTT_SIMULATOR_PASSWORD:?set MQTT_SIMULATOR_PASSWORD}"
PASSWD="${MOSQUITTO_PASSWORD_FILE:-/mosquitto/data/passwd}"
umask 077
touch "$PASSWD"
mosquitto_passwd -b "$PASSWD" iotp-gateway "$MQTT_GATEWAY_PASSWORD"
mosquitto_passwd -b "$PASSWD" iotp-simulator "$MQTT_SIMULATOR_PASSWORD"
if id mosquitto >/dev/null 2>&1; then chown mosquitto:mosquitto "$PASSWD"; fi
exec "$@"
