"""chatlog processors: projections of the Kafka log into Postgres and Meilisearch."""
