"""This machine and this process: who owns a leftover, the CPUs we may use, read-ahead threads,
atomic file publication."""
