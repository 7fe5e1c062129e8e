"""The rules of SPEC §5 that are decisions over plain data: retention, drill verdicts, the
shrink guard. Pure: no I/O, nothing of ours but the config model."""
