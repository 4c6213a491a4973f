"""mqcore_client: the client library (see its issue)."""
