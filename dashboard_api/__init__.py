"""FastAPI + WebSocket dashboard: live fleet state from Redis, history from ClickHouse."""
