"""The large-table backfill: spec, copier, checkpoints, throttle, progress and the runner of its phases."""
