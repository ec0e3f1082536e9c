"""History in ClickHouse: migrations, the Kafka -> ClickHouse sink, and analytics queries."""
