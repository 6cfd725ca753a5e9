"""The edges: Debezium decoding, database adapters, Kafka and Redis clients."""
