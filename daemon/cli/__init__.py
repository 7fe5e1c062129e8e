"""The command line: arguments in, one line and an exit code out; rendering at the edge."""
