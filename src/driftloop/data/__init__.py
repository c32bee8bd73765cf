"""Data in and out of the store: storage, the schema, ingest and validation, run records."""
