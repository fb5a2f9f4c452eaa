"""rsa-service: Markovian Recursive Self-Aggregation as durable jobs."""

__version__ = "0.1.0"
