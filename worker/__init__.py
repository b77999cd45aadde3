"""Celery GPU workers: app and config, thin tasks, runner (claim → fit → finish), reporter, reconciler."""
