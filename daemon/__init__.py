"""volkeep: scheduled backup, restore and restore drills for Docker named volumes."""

__version__ = "0.2.0"
