"""The engine: one loop, a thin runtime, callbacks for optional concerns, checkpoints, run dirs."""
