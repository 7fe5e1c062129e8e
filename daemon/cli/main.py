"""The command line: arguments in, one line per error out, exit codes in one place."""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import docker
import requests
import structlog

from daemon import __version__
from daemon.actions.backup import Published, run_backup
from daemon.actions.context import Context
from daemon.actions.fleet import (
    DEFAULT_GRACE,
    elsewhere,
    fleet_storages,
    survey_fleet,
    with_hint,
)
from daemon.actions.prune import run_prune
from daemon.actions.recovery import READERS, recovery_config
from daemon.actions.shrink import Accepted, run_accept_shrink
from daemon.cli.log import configure_logging
from daemon.cli.reference import SHELLS, completion_script, manual_page
from daemon.config import load_config
from daemon.config.model import Config, Policy, RetentionRules
from daemon.config.schedule import parse_duration
from daemon.config.values import NAME as DEFINED_NAME
from daemon.config.values import VOLUME_NAME, outside_the_volume, shorten
from daemon.engine.client import engine_failure
from daemon.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    OperationError,
    UsageError,
    VolkeepError,
)
from daemon.repository.store import Repository
from daemon.rules import shrink
from daemon.rules.retention import Decision, format_duration
from daemon.state.directory import WRITERS, check_state_dir
from daemon.system.memory import one_malloc_arena
from daemon.terminal.progress import end_line, human_bytes
from daemon.terminal.render import paint, plural

# The modules of the other commands are imported in the branch that runs them: a one-shot
# command (a backup) would otherwise pay 45-60 ms of CPU at each start for all of them.
if TYPE_CHECKING:
    from daemon.actions.listing import ArchiveRow
    from daemon.archive.tarstream import Member
    from daemon.repository.chunkgarbage import Collection
    from daemon.rules.verdict import DrillRecord

log = structlog.get_logger()


def absolute_path(text: str) -> Path:
    """Given a path on the command line, return it made absolute against the working
    directory (symbolic links kept as named)."""
    return Path(text).absolute()


def _name(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    """Given the rule of a kind of name, return the argparse type that checks it (a volume
    name from the command line becomes a lock file's and a storage key's name)."""

    def check(text: str) -> str:
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(
                f"invalid {what} name {shorten(text)!r}: letters, digits, '_', '.' and '-', "
                "starting with a letter or a digit, 200 at most"
            )
        return text

    check.__name__ = what
    return check


VOLUME = _name(VOLUME_NAME, "volume")
NAME = _name(DEFINED_NAME, "name")


def _member_pattern(text: str) -> str:
    """The argparse type of a pattern of members (restore --path, list --files): it may not
    point outside the volume."""
    why = outside_the_volume(text)
    if why is not None:
        raise argparse.ArgumentTypeError(why)
    return text


POLICY_HELP = "the policy's name, as the config defines it"
JSON_HELP = "print JSON instead of a table"
EXIT_STATUS = (
    "exit status: 0 success; 1 the operation failed (a backup, restore or drill that did "
    "not succeed, a drill that found a difference, a storage that failed); 2 bad usage or "
    "bad config"
)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error, pointing at --help (exit 2); every
    --help ends with the exit codes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", EXIT_STATUS)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"volkeep: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="volkeep", description="Scheduled backups of Docker volumes, with restore drills."
    )
    parser.add_argument("--version", action="version", version=f"volkeep {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("VOLKEEP_CONFIG", "/etc/volkeep")),
        help="a policy file or a directory of *.yaml files (default: $VOLKEEP_CONFIG or "
        "/etc/volkeep)",
    )
    parser.add_argument(
        "--state-dir",
        # absolute: the helpers' pipe is bind-mounted from it, and the engine takes no
        # relative paths
        type=absolute_path,
        default=Path(os.environ.get("VOLKEEP_STATE_DIR", "/var/lib/volkeep")),
        help="run history and locks (default: $VOLKEEP_STATE_DIR or /var/lib/volkeep)",
    )
    parser.add_argument(
        "--storage-url",
        metavar="URL",
        default=os.environ.get("VOLKEEP_STORAGE_URL"),
        help="read this storage instead of a config, on a machine without one (disaster "
        "recovery): s3://BUCKET/PREFIX?endpoint=URL&path_style=1&credentials_file=PATH, or "
        "a directory; for hosts, fleet status, list, restore, export and drill (default: "
        "$VOLKEEP_STORAGE_URL)",
    )
    parser.add_argument(
        "--identity-file",
        type=absolute_path,
        metavar="PATH",
        help="with --storage-url: the age identity file that opens encrypted archives",
    )
    parser.add_argument(
        "--helper-image",
        metavar="IMAGE",
        help="with --storage-url: the helper image to restore and drill with (default: "
        "busybox:1.36; it is never pulled)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="log lines on stderr: JSON (for the journal), console (readable), or auto: "
        "console on a terminal, JSON elsewhere (default)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="the least important log lines shown (default: info)",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    commands.add_parser("run", help="the daemon: scheduled backups and drills until SIGTERM")

    commands.add_parser("validate", help="check the config and show what it covers")

    backup = commands.add_parser(
        "backup", help="back up a policy's volumes now, into each of its storages"
    )
    backup.add_argument("policy", help=POLICY_HELP)
    backup.add_argument(
        "--volume", type=VOLUME, action="append", default=[], help="only this volume (repeat)"
    )

    listing = commands.add_parser("list", help="list archives, newest first")
    listing.add_argument("policy", nargs="?", help="only this policy's archives (default: all)")
    listing.add_argument("--volume", type=VOLUME, help="only this volume's archives")
    listing.add_argument("--json", action="store_true", help=JSON_HELP)
    _storage_and_host(listing, "list (default: every storage of the policy)")
    listing.add_argument(
        "--files",
        nargs="*",
        type=_member_pattern,
        metavar="PATTERN",
        help="list what one archive holds (--volume, --archive), from its manifest, without "
        "reading the archive; with PATTERNs, only what restore --path PATTERN would restore",
    )
    listing.add_argument("--archive", default="latest", help="with --files: archive id, or latest")

    restore = commands.add_parser("restore", help="restore an archive into a volume")
    restore.add_argument("policy", help=POLICY_HELP)
    restore.add_argument(
        "--volume", type=VOLUME, required=True, help="the volume the archive was taken of"
    )
    restore.add_argument("--archive", default="latest", help="archive id, or latest")
    restore.add_argument(
        "--to", dest="target", type=VOLUME, help="target volume (default: --volume)"
    )
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty target: its content is first saved as a safety archive "
        "(in every storage of the policy), then deleted, paths the policy excludes too",
    )
    restore.add_argument(
        "--stop-containers",
        action="store_true",
        help="stop the running containers that use the target for the restore, and start "
        "them again after it (without it, such a target is refused)",
    )
    restore.add_argument(
        "--path",
        action="append",
        default=[],
        type=_member_pattern,
        metavar="PATTERN",
        help="restore only the members matching PATTERN (repeat; exclude-pattern syntax: "
        "'uploads/2024/', '*.conf', 'app/config.yml'); the target is not emptied",
    )
    on_the_host = restore.add_mutually_exclusive_group()
    on_the_host.add_argument(
        "--to-dir",
        type=Path,
        metavar="DIR",
        help="restore into a directory on this host instead of a volume, without Docker "
        "(created if missing; one that holds anything needs --force, and then what is in "
        "the archive's way is replaced)",
    )
    on_the_host.add_argument(
        "--stdout",
        action="store_true",
        help="write the content of the one regular file --path names (its path as `list "
        "--files` shows it) to standard output, and nothing else",
    )
    _storage_and_host(restore, "read (default: the first of the policy's that holds it)")

    prune = commands.add_parser("prune", help="apply retention now: keep or delete, and why")
    prune.add_argument("policy", help=POLICY_HELP)
    prune.add_argument(
        "--volume", type=VOLUME, action="append", default=[], help="only this volume (repeat)"
    )
    prune.add_argument("--dry-run", action="store_true", help="show the decisions, change nothing")
    prune.add_argument(
        "--storage", type=NAME, help="only this storage (default: each of the policy's)"
    )

    accept_shrink = commands.add_parser(
        "accept-shrink",
        help="let retention delete the archives kept because a volume lost most of its content",
        description="A backup holding fewer than half the objects (of at least 10) or half "
        "the tar bytes (of at least 1 MiB) of the backup before it is a shrink: retention "
        "then keeps the backup before the loss, and the first after it, until you accept the "
        "shrink here or the longest keep window of the storage's rules has passed. Accepting "
        "the newest shrink accepts every earlier one. The acceptance is recorded in each "
        "storage, beside the volume's archives, for every prune there to see.",
    )
    accept_shrink.add_argument("policy", help=POLICY_HELP)
    accept_shrink.add_argument(
        "--volume", type=VOLUME, required=True, help="the volume whose shrink is meant"
    )
    accept_shrink.add_argument(
        "--storage", type=NAME, help="only in this storage (default: each of the policy's)"
    )

    drill = commands.add_parser(
        "drill", help="restore archives into a scratch volume and compare them with their manifest"
    )
    drill.add_argument("policy", help=POLICY_HELP)
    drill.add_argument(
        "--volume", type=VOLUME, action="append", default=[], help="only this volume (repeat)"
    )
    drill.add_argument(
        "--archive", help="archive id, or latest (default: the policy's drill.archive choice)"
    )
    _storage_and_host(drill, "drill (default: drill.storage, else the policy's first)")

    export = commands.add_parser(
        "export",
        help="write an archive's tar, byte for byte as the helper produced it",
        description="Write an archive's tar to standard output (or -o FILE), decrypted and "
        "decompressed, checked against its manifest as it streams. On a failure the exit "
        "status is 1: what a pipe received is not the archive; -o FILE is written only "
        "once the whole tar is proved.",
    )
    export.add_argument("policy", help=POLICY_HELP)
    export.add_argument(
        "--volume", type=VOLUME, required=True, help="the volume the archive was taken of"
    )
    export.add_argument("--archive", default="latest", help="archive id, or latest")
    export.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write FILE (default: standard output)"
    )
    _storage_and_host(export, "read (default: the first of the policy's that holds it)")

    hosts = commands.add_parser(
        "hosts",
        help="the hosts a storage holds: their policies, volumes, newest archive and drill",
    )
    hosts.add_argument("--storage", type=NAME, help="only this storage (default: every one)")
    hosts.add_argument("--json", action="store_true", help=JSON_HELP)

    fleet = commands.add_parser("fleet", help="the fleet of hosts that share a storage")
    fleet_commands = fleet.add_subparsers(
        dest="fleet_command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    fleet_status = fleet_commands.add_parser(
        "status",
        help="every host's volumes: newest archive and drill, overdue or failed (exit 1 if any)",
        description="Read only the storages: per host and volume, the newest archive and "
        "the newest drill verdict with their ages, and whether a backup or a drill is overdue "
        "against the schedules the host publishes in its marker. Exit 1 if anything is "
        "overdue or failed, or a storage cannot be read: a monitoring check.",
    )
    fleet_status.add_argument("--storage", type=NAME, help="only this storage (default: every one)")
    fleet_status.add_argument(
        "--grace",
        type=_duration,
        default=DEFAULT_GRACE,
        metavar="DURATION",
        help="how long after a scheduled run its archive or verdict may be missing before it "
        "is overdue; more than a backup takes, and the splay (default: 1h)",
    )
    fleet_status.add_argument("--json", action="store_true", help=JSON_HELP)

    adopt = commands.add_parser(
        "adopt-host",
        help="claim this host's name for this machine (after a rebuild changed its machine id)",
        description="A host name is claimed in each storage by the machine that first wrote "
        "under it; another machine is refused. After a rebuild or a replacement, run this on "
        "the new machine to claim the name for it (the old machine must be gone).",
    )
    adopt.add_argument("--storage", type=NAME, help="only this storage (default: every one)")

    rename = commands.add_parser(
        "rename-host",
        help="move this machine's host name OLD to NEW; OLD's archives stay readable",
        description="Claim NEW for this machine and mark OLD renamed (no volkeep writes under "
        "it again). OLD's archives stay where they are, readable with --host OLD. Then set "
        "daemon.host: NEW and restart the daemon.",
    )
    rename.add_argument("old", type=NAME, help="the name this machine writes under now")
    rename.add_argument("new", type=NAME, help="the name to write under from now on")
    rename.add_argument("--storage", type=NAME, help="only this storage (default: every one)")

    status = commands.add_parser(
        "status", help="per volume: last backup, last drill, next runs; and the daemon"
    )
    status.add_argument("--json", action="store_true", help=JSON_HELP)

    commands.add_parser(
        "schema",
        help="print the JSON Schema of policy files, for editors",
        description="Print the JSON Schema (draft 2020-12) of a policy file: name it in a "
        "file's first line, '# yaml-language-server: $schema=PATH', and an editor completes "
        "and checks the file. `volkeep validate` checks more than the schema can.",
    )

    init = commands.add_parser(
        "init",
        help="draft a first policy file from the volumes and containers on this host",
        description="Draft a commented policy file: one policy per Compose project, one for "
        "the other volumes, containers of database images stopped during backups, a local "
        "storage, nightly backups and a weekly drill. What it writes loads.",
    )
    init.add_argument(
        "--output", type=Path, metavar="FILE", help="write it to FILE (default: print it)"
    )
    init.add_argument("--force", action="store_true", help="replace --output if it exists")

    completion = commands.add_parser(
        "completion",
        help="print the shell completion script of volkeep (install.sh installs it)",
        description="Print the completion script of bash or zsh: commands, options, their "
        "choices and file names. For bash: volkeep completion bash > "
        "/usr/local/share/bash-completion/completions/volkeep",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    commands.add_parser(
        "manpage",
        help="print the manual page volkeep(1) in roff (install.sh installs it)",
        description="Print the manual page: volkeep manpage | man -l -",
    )
    return parser


def _duration(text: str) -> timedelta:
    """The argparse type of a duration ("30m", "2h")."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _storage_and_host(command: argparse.ArgumentParser, storage_help: str) -> None:
    command.add_argument("--storage", type=NAME, help=f"the storage to {storage_help}")
    command.add_argument(
        "--host",
        type=NAME,
        help="the host whose archives to reach in a shared storage (disaster recovery on a "
        "new host; default: this host)",
    )


def _print_list(args: argparse.Namespace, rows: list[ArchiveRow]) -> None:
    from daemon.actions.listing import drill_summary

    for row in rows:
        address = f"{row.key.policy}/{row.key.volume}/{row.key.id} in {row.storage}"
        if row.problem is not None:
            print(f"volkeep: warning: {address}: {row.problem}", file=sys.stderr)
        if row.key.in_the_future():
            print(
                f"volkeep: warning: {address} is dated in the future (the clock of the host "
                "that wrote it is ahead?); 'latest' passes it over",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps([row.to_json() for row in rows], indent=1))
        return
    now = datetime.now(UTC)
    # SIZE: the tar (what a restore writes); ADDED: what the backup stored (its archive
    # file, or its recipe and new chunks: a deduplicated archive's file is small)
    header = ("POLICY", "VOLUME", "STORAGE", "ID", "CREATED (UTC)", "SIZE", "ADDED", "DRILL")
    table = [header]
    for row in rows:
        manifest = row.manifest
        created = (
            manifest.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if manifest else "-"
        )
        size = human_bytes(manifest.tar_size) if manifest else "-"
        added = human_bytes(manifest.added_bytes) if manifest else "-"
        drill = row.mark or drill_summary(row.drill, now)
        table.append(
            (row.key.policy, row.key.volume, row.storage, row.key.id, created, size, added, drill)
        )
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


def _print_files(args: argparse.Namespace, entries: Iterable[Member]) -> None:
    if args.json:  # as json.dumps of the list would, one entry at a time
        opening = "["
        for entry in entries:
            text = json.dumps(entry.to_json(), indent=1).replace("\n", "\n ")
            print(f"{opening}\n {text}", end="")
            opening = ","
        print("[]" if opening == "[" else "\n]")
        return
    for entry in entries:
        moment = datetime.fromtimestamp(entry.mtime, UTC).strftime("%Y-%m-%d %H:%M:%S")
        size = human_bytes(entry.size) if entry.type == "file" else "-"
        link = f" -> {entry.link}" if entry.link else ""
        print(
            f"{entry.type:<8} {entry.mode:04o} {entry.uid:>5}:{entry.gid:<5} {size:>9} "
            f"{moment}  {entry.path}{link}"
        )


def _describe_rules(retention: RetentionRules, timezone: str) -> str:
    """Given keep rules, return them as written ("keep_last 2, keep_within 10d")."""
    rules = [
        f"{name} {format_duration(value) if isinstance(value, timedelta) else value}"
        for name, value in vars(retention).items()
        if value is not None
    ]
    if not rules:
        return "no keep rules: every archive is kept"
    return f"{', '.join(rules)} (calendar in {timezone})"


def _print_prune(
    policy: Policy, dry_run: bool, repository: Repository, volume: str, decisions: list[Decision]
) -> None:
    """Print one volume's decisions in one storage under its rules, newest first: keep or
    delete, the id, the reasons."""
    rules = _describe_rules(policy.retention_for(repository.name), policy.timezone)
    print(f"{policy.name}/{volume} in {repository.name}: {rules}")
    width = max((len(decision.id) for decision in decisions), default=0)
    for decision in decisions:
        action = "keep" if decision.keep else "delete"
        reasons = ", ".join(decision.reasons) or "no keep rule matches"
        print(f"  {action:<6}  {decision.id:<{width}}  {reasons}")
    deleted = sum(not decision.keep for decision in decisions)
    outcome = f"{deleted} to delete (dry run: nothing deleted)" if dry_run else f"{deleted} deleted"
    print(f"  {len(decisions) - deleted} kept, {outcome}")
    every_reason = (reason for decision in decisions for reason in decision.reasons)
    if any(reason.startswith(shrink.REASON_BEFORE) for reason in every_reason):
        print(
            f"  the volume shrank: if that was meant, `volkeep accept-shrink {policy.name} "
            f"--volume {volume}` lets retention delete what it keeps for the shrink"
        )


def _print_collection(dry_run: bool, repository: Repository, collection: Collection) -> None:
    """Print what garbage collection did (or would do) in one storage's chunk repository."""
    verb = "would free" if dry_run else "freed"
    repacked = ""
    if collection.repacked:
        stored = "would store" if dry_run else "stored"
        repacked = (
            f"; {stored} the live chunks of {collection.repacked} mostly-dead packs again "
            f"({collection.moved_bytes} bytes)"
        )
    print(
        f"chunks in {repository.name}: {verb} {collection.freed_packs} packs "
        f"({collection.freed_bytes} bytes){repacked}; {collection.condemned} condemned, "
        "freed once unused for the margin"
    )


def _print_accepted(policy: str, volume: str, accepted: Accepted) -> None:
    """Print what accept-shrink did in one storage."""
    address = f"{policy}/{volume} in {accepted.storage}"
    found = accepted.shrink
    if found is None:
        print(f"{address}: no shrink pending")
        return
    print(
        f"{address}: accepted the shrink {found.describe()}; retention may now delete "
        f"{found.before} and the archives before it"
    )


def _print_drill(record: DrillRecord) -> None:
    """Print one drill's verdict: passed with the restore time, or FAILED and why."""
    address = f"{record.policy}/{record.volume} {record.archive}"
    if not record.passed:
        print(f"{address}: {paint('FAILED')}: {record.reason}")
        return
    rate = f", {human_bytes(record.restore_rate)}/s" if record.restore_rate else ""
    print(
        f"{address}: passed, {human_bytes(record.bytes)} restored in "
        f"{record.restore_seconds:.1f}s{rate}"
    )


def _print_backup(published: Published) -> None:
    """Print a new archive and where it is (a failure is told once, by the error line)."""
    manifest = published.manifest
    storages = ", ".join(repository.name for repository in published.repositories)
    objects = plural(manifest.entry_count, "object")
    print(
        f"{manifest.policy}/{manifest.volume}: archive {manifest.id} "
        f"({human_bytes(manifest.size)}, {objects}) in {storages}"
    )


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "schema":
        from daemon.config.json_schema import policy_file_schema_text

        print(policy_file_schema_text(), end="")
        return EXIT_OK
    if args.command == "completion":
        print(completion_script(_parser(), args.shell), end="")
        return EXIT_OK
    if args.command == "manpage":
        print(manual_page(_parser()), end="")
        return EXIT_OK
    if args.command == "init":
        from daemon.actions.init import run_init  # imported here: see "run" below

        draft = run_init(args.output, force=args.force)
        if args.output is None:
            print(draft.text, end="")
        else:
            print(f"wrote {args.output}: {draft.summary()}")
        return EXIT_OK
    config = _config(args)
    check_state_dir(args.state_dir, write=args.command in WRITERS)
    ctx = Context(config, args.state_dir)
    ctx.recover()
    if args.command == "run":
        # Imported here: the daemon's modules (apscheduler, prometheus_client, the status
        # server) and init's cost each one-shot command (a backup) 35-50 ms of CPU at start.
        from daemon.service.scheduler import run_daemon

        return run_daemon(config, args.config, args.state_dir)
    # The leftovers of dead processes are removed beside the command (promise 4), and it
    # exits once they are; an interrupted command (BaseException) does not wait for them.
    try:
        status = _run_command(ctx, args)
    except Exception:
        ctx.wait_for_cleanup()
        raise
    ctx.wait_for_cleanup()
    return status


def _config(args: argparse.Namespace) -> Config:
    """Return the config the command runs with: the policy files, or (with --storage-url)
    one storage and a reading policy for each policy it holds. Raise UsageError if a
    command needs what a storage URL cannot give."""
    if args.storage_url is None:
        if args.identity_file is not None or args.helper_image is not None:
            raise UsageError("--identity-file and --helper-image go with --storage-url")
        return load_config(args.config)
    if args.command not in READERS:
        raise UsageError(
            f"{args.command} needs a config: --storage-url serves "
            "hosts, fleet status, list, restore, export and drill"
        )
    if args.command == "restore" and args.force:
        raise UsageError(
            "restore --force keeps a safety archive of the target in the config's storages: "
            "with --storage-url, restore into a new or empty volume (--to NAME)"
        )
    from daemon.config.url import storage_from_url

    storage = storage_from_url(args.storage_url)
    return recovery_config(storage, args.identity_file, args.helper_image)


def _run_command(ctx: Context, args: argparse.Namespace) -> int:
    if args.command == "validate":
        from daemon.actions.validate import validate

        for warning in ctx.config.warnings:
            print(f"volkeep: warning: {warning}", file=sys.stderr)
        print(validate(ctx))
    elif args.command == "backup":
        run_backup(ctx, args.policy, args.volume, report=_print_backup)
    elif args.command == "list" and args.files is not None:
        from daemon.actions.listing import archive_files

        if args.policy is None or args.volume is None:
            raise UsageError("--files lists one archive: give the policy and --volume")
        entries = archive_files(
            ctx,
            ctx.policy(args.policy),
            args.volume,
            args.archive,
            args.files,
            storage=args.storage,
            host=args.host,
        )
        _print_files(args, entries)
    elif args.command == "list":
        from daemon.actions.listing import list_archives

        listing = list_archives(ctx, args.policy, args.volume, storage=args.storage, host=args.host)
        _print_list(args, listing.rows)
        for failure in listing.unreadable:
            print(f"volkeep: {failure}", file=sys.stderr)
        if listing.unreadable:
            return EXIT_FAILED
        hint = None if listing.rows else _elsewhere(ctx, args.policy, args.volume, args.host)
        if hint is not None:
            print(f"volkeep: {hint}", file=sys.stderr)
    elif args.command == "restore" and (args.to_dir is not None or args.stdout):
        _restore_on_the_host(ctx, args)
    elif args.command == "restore":
        from daemon.actions.restore import RestoreRequest, restore_volume, safety_whereabouts

        policy = ctx.policy(args.policy)
        request = RestoreRequest(
            storage=args.storage,
            host=args.host,
            force=args.force,
            stop_containers=args.stop_containers,
            paths=tuple(args.path),
        )
        try:
            result = restore_volume(
                ctx, policy, args.volume, args.archive, args.target or args.volume, request
            )
        except (OperationError, UsageError) as error:
            hint = _elsewhere(ctx, policy.name, args.volume, args.host)
            raise error if hint is None else with_hint(error, hint) from None
        except (docker.errors.DockerException, requests.RequestException) as error:
            failure = engine_failure(error)
            failure.policy, failure.volume = policy.name, args.volume
            raise failure from None
        if result.safety is not None:
            print(
                f"saved the previous content of {result.target} as "
                f"{safety_whereabouts(result.safety)}"
            )
        print(
            f"restored {args.volume} archive {result.archive} from {result.storage} "
            f"into {result.target}"
        )
        shortfall = result.safety_shortfall()
        if shortfall is not None:
            raise shortfall
    elif args.command == "prune":
        from daemon.actions.collect import run_collect

        report = functools.partial(_print_prune, ctx.policy(args.policy), args.dry_run)
        run_prune(ctx, args.policy, args.volume, args.dry_run, args.storage, report=report)
        collected = functools.partial(_print_collection, args.dry_run)
        run_collect(ctx, args.policy, args.dry_run, args.storage, report=collected)
    elif args.command == "accept-shrink":
        for accepted in run_accept_shrink(ctx, args.policy, args.volume, args.storage):
            _print_accepted(args.policy, args.volume, accepted)
    elif args.command == "drill" and _as_scheduled(ctx.policy(args.policy), args):
        from daemon.actions.fleetdrill import run_scheduled_drill, scheduled_targets

        for target in scheduled_targets(ctx, ctx.policy(args.policy)):
            run_scheduled_drill(ctx, args.policy, target, report=_print_drill)
    elif args.command == "drill":
        from daemon.actions.drill import run_drill

        run_drill(
            ctx,
            args.policy,
            args.volume,
            args.archive,
            storage=args.storage,
            host=args.host,
            report=_print_drill,
        )
    elif args.command == "export":
        _export(ctx, args)
    elif args.command == "hosts":
        from daemon.cli.fleet import describe_hosts

        now = datetime.now(UTC)
        fleet = survey_fleet(ctx, fleet_storages(ctx, args.storage), now)
        print(json.dumps(fleet.to_json(now, DEFAULT_GRACE), indent=1) if args.json else
              describe_hosts(fleet, now))  # fmt: skip
        for failure in fleet.unreadable:
            print(f"volkeep: {failure}", file=sys.stderr)
        return EXIT_FAILED if fleet.unreadable else EXIT_OK
    elif args.command == "fleet":
        from daemon.cli.fleet import describe_fleet

        now = datetime.now(UTC)
        fleet = survey_fleet(ctx, fleet_storages(ctx, args.storage), now, args.grace)
        print(json.dumps(fleet.to_json(now, args.grace), indent=1) if args.json else
              describe_fleet(fleet, now))  # fmt: skip
        for failure in fleet.unreadable:
            print(f"volkeep: {failure}", file=sys.stderr)
        return EXIT_OK if fleet.healthy else EXIT_FAILED
    elif args.command == "adopt-host":
        from daemon.actions.hostname import adopt_host

        for claimed in adopt_host(ctx, fleet_storages(ctx, args.storage)):
            print(claimed.describe())
    elif args.command == "rename-host":
        from daemon.actions.hostname import rename_host

        for claimed in rename_host(ctx, fleet_storages(ctx, args.storage), args.old, args.new):
            print(claimed.describe())
        print(f"now set daemon.host: {args.new} (the archives of {args.old} stay readable with "
              f"--host {args.old})")  # fmt: skip
    elif args.command == "status":
        from daemon.actions.status import collect_status, describe_status

        now = datetime.now(UTC)
        status = collect_status(ctx, now)
        print(json.dumps(status.to_json(), indent=1) if args.json else describe_status(status, now))
    return EXIT_OK


def _as_scheduled(policy: Policy, args: argparse.Namespace) -> bool:
    """Whether `drill POLICY` drills what the policy's schedule would: other hosts' archives
    in turn (drill.hosts), unless the command names what to drill."""
    named = args.volume or args.archive or args.storage or args.host
    return policy.drill is not None and bool(policy.drill.hosts) and not named


def _elsewhere(
    ctx: Context, policy: str | None, volume: str | None, host: str | None
) -> str | None:
    """The hint of a list or restore that found nothing: the hosts that hold archives of
    the policy (or volume), if any; None without a policy to look for."""
    return None if policy is None else elsewhere(ctx, policy, volume, host)


def _export(ctx: Context, args: argparse.Namespace) -> None:
    """Export to -o FILE, or to standard output unless it is a terminal."""
    from daemon.actions.export import Output, export_archive, output_file

    policy = ctx.policy(args.policy)
    where = {"storage": args.storage, "host": args.host}
    if args.output is not None:
        with output_file(args.output) as output:
            export_archive(ctx, policy, args.volume, args.archive, output, **where)
        return
    if sys.stdout.isatty():
        raise UsageError("refusing to write a tar to a terminal: give -o FILE, or a pipe")
    stdout = Output("standard output", sys.stdout.buffer)
    export_archive(ctx, policy, args.volume, args.archive, stdout, **where)
    stdout.flush()


def _restore_on_the_host(ctx: Context, args: argparse.Namespace) -> None:
    """restore --to-dir DIR, or --path P --stdout: onto the host, without the engine."""
    from daemon.actions.export import Output
    from daemon.actions.restore_host import restore_file_to, restore_to_directory

    if args.target is not None or args.stop_containers:
        raise UsageError(
            "--to-dir and --stdout restore onto this host: no --to, no --stop-containers"
        )
    policy = ctx.policy(args.policy)
    where = {"storage": args.storage, "host": args.host}
    if args.to_dir is not None:
        if args.path:
            raise UsageError("--to-dir restores the whole archive: no --path")
        done = restore_to_directory(
            ctx, policy, args.volume, args.archive, args.to_dir, force=args.force, **where
        )
        print(
            f"restored {args.volume} archive {done.archive} from {done.storage} into "
            f"{args.to_dir} ({plural(done.objects, 'object')})"
        )
        return
    if len(args.path) != 1 or args.force:
        raise UsageError("--stdout writes one file: give exactly one --path, and no --force")
    stdout = Output("standard output", sys.stdout.buffer)
    restore_file_to(ctx, policy, args.volume, args.archive, args.path[0], stdout, **where)
    stdout.flush()


class Terminated(BaseException):
    """SIGTERM arrived: unwind, so that every `finally` runs (containers start again)."""


def _terminate(signal_number: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the unwinding
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    one_malloc_arena()  # before any thread: the peak RSS of restores and drills
    configure_logging(args.log_format, args.log_level)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _dispatch(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"volkeep: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except VolkeepError as error:
        print(f"volkeep: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        end_line()
        print("volkeep: interrupted (Ctrl-C); nothing half-written was published", file=sys.stderr)
        return 130
    except Terminated:
        end_line()
        print("volkeep: terminated (SIGTERM); nothing half-written was published", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (docker.errors.DockerException, requests.RequestException) as error:
        end_line()
        print(f"volkeep: {engine_failure(error)}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # the reader of the output left (`volkeep list --files | head`): stop quietly, with
        # the status of a command that SIGPIPE ended, as git and cat do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + signal.SIGPIPE
    except OSError as error:  # a file volkeep may not read or write: name it
        where = f"{error.filename}: " if error.filename else ""
        print(f"volkeep: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # the last line of defence: one line, never a traceback
        log.debug("internal error", exc_info=True)
        print(f"volkeep: internal error: {error!r} (run with --log-level debug)", file=sys.stderr)
        return EXIT_FAILED


def run() -> NoReturn:
    """The `volkeep` command (and `python3 -m daemon`): `main`, then the end of the process
    without the interpreter's teardown.

    By the time `main` returns, everything the command wrote is closed (and what it
    published, synced). The teardown that follows frees every object the process made, one
    by one: botocore's service model alone takes 0.25 s of it here, and a repeat backup
    with nothing changed, 2-2.5 s in all, spent 0.3-0.4 s in it. So the output is flushed,
    the exit handlers run (logging's among them), and the process ends at once, unless a
    thread that the normal exit would wait for still runs, a profiler or tracer watches
    (`python3 -m cProfile -m daemon` writes its profile after `run`), or the flush fails (a
    closed pipe), which the normal exit reports as it always has."""
    code = main()
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(not thread.daemon for thread in others) or sys.getprofile() or sys.gettrace():
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        sys.exit(code)
    atexit._run_exitfuncs()
    os._exit(code)
