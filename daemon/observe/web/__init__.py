"""The daemon's read-only web face on `daemon.metrics.listen`: Prometheus's /metrics, and a
status page at / (server-rendered HTML with inline SVG charts: no external asset, no
JavaScript)."""
