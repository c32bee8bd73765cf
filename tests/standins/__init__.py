"""Local stand-ins for services the project talks to, for tests (127.0.0.1 only)."""
