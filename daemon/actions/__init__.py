"""One module per user action, each readable top to bottom as the steps of its pipeline."""
