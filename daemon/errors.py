"""Errors as values with addresses: each names the thing at fault and maps to an exit code.

The CLI turns any `VolkeepError` into one line on stderr and its `exit_code`, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class VolkeepError(Exception):
    """An error the operator can act on; `str()` is the one line that is shown."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration, addressed by file, line, column and key path."""

    file: str
    line: int
    column: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        key = printable(self.key)  # a key is the policy's text: it may hold a line break
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"


def printable(text: str) -> str:
    """Given text from outside, return it with line breaks and control characters escaped,
    so that it stays on its one line and cannot drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class ConfigError(VolkeepError):
    """The configuration is invalid; carries every problem found, not only the first."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class UsageError(VolkeepError):
    """The command line asks for something that does not exist (unknown policy, volume...)."""

    exit_code = EXIT_USAGE


class OperationError(VolkeepError):
    """A backup, restore, drill or prune that failed, addressed by policy/volume/archive."""

    def __init__(
        self,
        message: str,
        *,
        policy: str | None = None,
        volume: str | None = None,
        archive: str | None = None,
    ) -> None:
        self.policy = policy
        self.volume = volume
        self.archive = archive
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        address = "/".join(part for part in (self.policy, self.volume, self.archive) if part)
        return f"{address}: {self.message}" if address else self.message


class ArchiveFault(OperationError):
    """The archive itself is at fault: damaged, unsafe, or not what its manifest says. A
    drill ended by one is a failed verdict on the archive (daemon.rules.verdict)."""


class EnvironmentFailure(OperationError):
    """What an operation runs on failed (the Docker engine, a storage, a missing key), not
    the archive or volume it works on. A drill ended by one is "not run": no verdict."""


class StorageFailure(EnvironmentFailure):
    """A storage could not be read or written (unreachable, refused, full): a fault of the
    storage, not of the archive."""


class KeyMissing(EnvironmentFailure):
    """An encrypted archive and no identity that opens it: a fault of the setup, not of the
    archive."""


class EngineFailure(EnvironmentFailure):
    """The Docker engine or a helper container failed: an engine error, the helper image
    missing, a helper cancelled by volkeep's stop or killed."""


class DockerUnavailable(EngineFailure):
    """The Docker engine does not answer."""


class HostileArchive(ArchiveFault):
    """An archive member would write outside the target or create something refused."""


def combined_failure(failures: list[OperationError], action: str, policy: str) -> OperationError:
    """Given the failures of one action over several volumes, return the one error to
    report: the failure itself if there is one, else a summary naming each."""
    if len(failures) == 1:
        return failures[0]
    details = "; ".join(
        f"{'/'.join(part for part in (failure.volume, failure.archive) if part)}: {failure.message}"
        for failure in failures
    )
    return OperationError(f"{len(failures)} {action}s failed: {details}", policy=policy)
