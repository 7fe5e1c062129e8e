"""The daemon's own state on this host: run history, volume locks, the state dir."""
