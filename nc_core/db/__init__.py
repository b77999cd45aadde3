"""SQLAlchemy 2.0 models, sessions and repository functions of the ncsweep database (no torch import)."""
