"""What the operator sees of the daemon: metrics, the status page, notifications."""
