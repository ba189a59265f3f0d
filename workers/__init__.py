"""The worker process: one per running model component, pinned to its cores."""
