"""The configuration: policy files loaded, validated and turned into plain data.

`load_config` is the one entry point; `parse_schedule`, `parse_duration` and
`cron_trigger` are shared with the scheduler.
"""

from daemon.config.loader import load_config
from daemon.config.schedule import cron_trigger, parse_duration, parse_schedule

__all__ = ["cron_trigger", "load_config", "parse_duration", "parse_schedule"]
