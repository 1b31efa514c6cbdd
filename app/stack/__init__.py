"""The local stack: embedded PostgreSQL, Redis and SQS endpoint, plus the API and workers."""

from app.stack.supervisor import LocalStack

__all__ = ["LocalStack"]
