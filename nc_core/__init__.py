"""Shared kernel of ncsweep, importable by service and worker: specs, settings, data, models, training, metrics, db."""
