"""Training helpers: optimizers and decay, LR schedules, atomic checkpoints, evaluation after an epoch."""
