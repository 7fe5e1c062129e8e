"""Secrets under faults (issue 13, SPEC promise 6): the logs of the whole fault suite hold none
of the test secrets — the age identity of its encrypted policies, the S3 secret key, a wrong
secret key — whatever went wrong around them.

Every volkeep command of the suite leaves its output in the log book (tests/faults/
conftest.py). This module adds the faults that meet the secrets most closely, at volkeep's
most talkative log level: secrets pasted into the policy text, an S3 server that dies under
an encrypted backup, a wrong S3 secret key, kill -9 in the middle of an upload. Its last test
runs after every other test of the session and reads the whole book.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import mountpoint
from tests.faults.conftest import (
    AgeKey,
    Ledger,
    LogBook,
    Things,
    Volkeep,
    check_the_promises,
    one_clean_error,
)
from tests.support.seaweed import S3Bucket

pytestmark = pytest.mark.faults

DEBUG = ("--log-level", "debug")


@pytest.fixture
def bucket(s3_bucket: S3Bucket, logbook: LogBook) -> Iterator[S3Bucket]:
    """A bucket of the suite's S3 server, whose secret key is a test secret."""
    logbook.secrets.append(s3_bucket.server.secret_key)
    yield s3_bucket
    if not s3_bucket.server.running:
        s3_bucket.server.start()


def test_secrets_pasted_into_the_policy_are_refused_at_their_line_and_never_repeated(
    volkeep: Volkeep, age_key: AgeKey, logbook: LogBook, tmp_path: Path
):
    pasted = "wJalrXUtnFEMI/" + secrets.token_urlsafe(24)
    logbook.secrets.append(pasted)
    config = volkeep.workspace.config
    config.write_text(
        "version: 1\n"
        "storage:\n"
        f"  local: {{type: local, path: {tmp_path / 'repo'}}}\n"
        "  offsite:\n"
        "    type: s3\n"
        "    bucket: volkeep-backups\n"
        f"    secret_access_key: {pasted}\n"
        "policies:\n"
        "  app:\n"
        "    volumes: [app_db]\n"
        "    storage: local\n"
        f"    encryption: {{age: {{recipients: ['{age_key.secret}']}}}}\n"
    )

    for command in (["validate"], ["backup", "app"], ["run"]):
        refused = volkeep.run(*DEBUG, *command, timeout=60)

        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.splitlines()
        assert any(line.startswith(f"volkeep: {config}:7:") for line in lines), lines
        assert any(line.startswith(f"volkeep: {config}:12:") for line in lines), lines
        assert pasted not in refused.stdout + refused.stderr
        assert age_key.secret not in refused.stdout + refused.stderr


def test_encrypted_backups_to_s3_through_faults_log_no_secret_and_keep_the_promises(
    things: Things,
    volkeep: Volkeep,
    ledger: Ledger,
    bucket: S3Bucket,
    age_key: AgeKey,
    logbook: LogBook,
    helper_image: str,
    tmp_path: Path,
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(12 << 20))
    service = things.service(helper_image, volume, "service")
    wrong_secret = "wrong-" + secrets.token_hex(16)
    logbook.secrets.append(wrong_secret)
    wrong = bucket.server.credentials_file(tmp_path / "wrong.credentials", secret_key=wrong_secret)

    def configure(credentials: Path) -> None:
        volkeep.workspace.write_config(
            {
                "app": {
                    "volumes": [volume],
                    "storage": ["local", "offsite"],
                    "stop_containers": True,
                    "encryption": age_key.encryption(),
                    "retention": {"keep_last": 1},
                }
            },
            storages={"offsite": bucket.storage() | {"credentials_file": str(credentials)}},
        )

    configure(bucket.credentials_file)
    volkeep.ok(*DEBUG, "backup", "app")
    content = ledger.tree(volume)
    ledger.claim({volume: content})

    # kill -9 in the middle of the upload; the next backup aborts the stale one
    killed = volkeep.run(*DEBUG, "backup", "app", kill_point="half of the archive written")
    assert killed.returncode == -signal.SIGKILL
    volkeep.ok(*DEBUG, "backup", "app")

    # the S3 server dies under a backup: the local copy is published, the S3 one fails
    paused = volkeep.start(*DEBUG, "backup", "app", pause_at="half of the archive written")
    paused.wait_until_paused()
    bucket.server.kill()
    paused.signal(signal.SIGCONT)
    failed = paused.wait()
    bucket.server.start()
    assert "'offsite'" in one_clean_error(failed)

    # a wrong secret key: refused by the server, named, never repeated
    configure(wrong)
    denied = volkeep.run(*DEBUG, "backup", "app")
    assert "'offsite'" in one_clean_error(denied)
    configure(bucket.credentials_file)
    volkeep.ok(*DEBUG, "backup", "app")

    ledger.claim({volume: content})
    listed = check_the_promises(ledger, [service])
    assert {archive.storage for archive in listed} == {"local", "offsite"}
    assert [entry for entry in logbook.entries if wrong_secret in entry[1]] == []


def test_an_encrypted_dedup_backup_killed_mid_way_stores_no_secret_and_keeps_the_promises(
    things: Things,
    volkeep: Volkeep,
    ledger: Ledger,
    bucket: S3Bucket,
    age_key: AgeKey,
    helper_image: str,
):
    volume = things.volume("data")
    (mountpoint(things.api, volume) / "data.bin").write_bytes(os.urandom(12 << 20))
    service = things.service(helper_image, volume, "service")
    volkeep.workspace.write_config(
        {
            "app": {
                "volumes": [volume],
                "format": "dedup",
                "storage": ["local", "offsite"],
                "stop_containers": True,
                "encryption": age_key.encryption(),
            }
        },
        storages={"offsite": bucket.storage() | {"credentials_file": str(bucket.credentials_file)}},
    )

    killed = volkeep.run(*DEBUG, "backup", "app", kill_point="first pack stored, no index yet")
    assert killed.returncode == -signal.SIGKILL
    volkeep.ok(*DEBUG, "backup", "app")

    ledger.claim({volume: ledger.tree(volume)})
    listed = check_the_promises(ledger, [service])
    assert {archive.storage for archive in listed} == {"local", "offsite"}
    stored = [volkeep.workspace.storage, volkeep.workspace.state_dir]
    secrets_kept = [age_key.secret, bucket.server.secret_key]
    holding = [
        path
        for root in stored
        for path in root.rglob("*")
        if path.is_file() and any(secret.encode() in path.read_bytes() for secret in secrets_kept)
    ]
    assert holding == []


@pytest.mark.after_the_fault_suite
def test_no_log_of_the_fault_suite_holds_a_test_secret(logbook: LogBook, age_key: AgeKey):
    assert logbook.entries, "no volkeep command ran"
    assert age_key.secret in logbook.secrets
    assert logbook.holding_secrets() == []
    print(
        f"\n{len(logbook.entries)} volkeep commands and {len(logbook.files)} daemon logs, "
        f"{len(logbook.secrets)} test secrets: none printed"
    )
