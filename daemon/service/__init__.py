"""The daemon's parts, each in its own module; `daemon.service.scheduler` puts them together.

- `jobs`: the job table, one APScheduler job per policy backup and drill, replaced whole on
  a reload (built first, then swapped) and caught up once after runs missed while down.
- `runner`: one scheduled run, every volume of a policy, under `daemon.max_parallel`.
- `status`: what the daemon does, from the event stream, for systemd's STATUS= and
  `daemon.json`; the heartbeat that proves the scheduler dispatches.
- `shutdown`: no new operation, then the running ones get `daemon.shutdown_timeout`, then
  their helpers are killed.
- `observer`: the metrics and the status page, kept fresh from the storages and the run
  history after each operation.
"""
