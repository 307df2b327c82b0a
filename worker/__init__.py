"""Celery worker: queues, tasks, the outbox relay and periodic jobs."""
