"""The command line: arguments in, one line and an exit code out; rendering at the edge."""

import sys

# structlog imports rich, when it happens to be installed (a test tool pulls it in), for
# its console tracebacks: 60-70 ms of CPU at each start, a tenth of a repeat backup of
# unchanged data (issue 20). volkeep does not depend on rich, so its commands render the
# same without it everywhere: rich is kept out of the command's process.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
