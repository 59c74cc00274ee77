"""Training: everything that knows Lightning (CLI, LightningModule, data module, batch-planner callback, OOM recovery)."""
