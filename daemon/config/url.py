"""A storage named by one URL on the command line (`--storage-url`), for a machine that has
no policy file: disaster recovery, a fleet check (docs/disaster-recovery.md).

- `s3://BUCKET/PREFIX?endpoint=URL&path_style=1&region=R&credentials_file=PATH&profile=P
  &ca_bundle=PATH`: an S3 bucket; every parameter is optional. Credentials come from
  `credentials_file`, else the standard AWS chain (`AWS_ACCESS_KEY_ID`, ...), never from
  the URL.
- `/PATH` or `file:///PATH`: a local directory (a mounted disk, an NFS share).

The storage is checked by the same rules as one in a policy file (`parse_storage`).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import yaml

from daemon.config.model import StorageConfig
from daemon.config.nodes import Invalid, mapping_entries
from daemon.config.schema import parse_storage
from daemon.errors import UsageError

OPTION = "--storage-url"
STORAGE_NAME = "url"  # the storage's name in messages and `list`'s STORAGE column
S3_PARAMETERS = ("endpoint", "region", "path_style", "credentials_file", "profile", "ca_bundle")
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


def storage_from_url(url: str) -> StorageConfig:
    """Given a storage URL (see the module's doc), return its storage. Raise UsageError,
    naming what is wrong (never echoing a credential), if it is none."""
    parts = urlsplit(url)
    fields: dict[str, object]
    if parts.scheme == "s3":
        if "@" in parts.netloc:
            raise UsageError(
                f"{OPTION}: credentials do not belong in the URL: use credentials_file=PATH "
                "or the AWS_* environment variables"
            )
        fields = {"type": "s3", "bucket": parts.netloc, "prefix": parts.path.strip("/")}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in S3_PARAMETERS:
                raise UsageError(
                    f"{OPTION}: unknown parameter {key!r} (known: {', '.join(S3_PARAMETERS)})"
                )
            fields[key] = _flag(value) if key == "path_style" else value
    elif parts.scheme in ("", "file") and not parts.query and not parts.netloc:
        fields = {"type": "local", "path": parts.path}
    else:
        raise UsageError(
            f"{OPTION}: expected s3://BUCKET/PREFIX?endpoint=... or an absolute path, got "
            f"a {parts.scheme or 'relative'} URL"
        )
    document = yaml.compose(yaml.safe_dump({STORAGE_NAME: fields}))
    assert document is not None  # a mapping was dumped
    try:
        entries, _ = mapping_entries(document, "")
        return parse_storage(entries[0], STORAGE_NAME)
    except Invalid as error:
        problems = "; ".join(f"{problem.key}: {problem.message}" for problem in error.problems)
        raise UsageError(f"{OPTION}: {problems}") from None


def _flag(value: str) -> bool:
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise UsageError(f"{OPTION}: path_style is 1 or 0, true or false, got {value!r}")
