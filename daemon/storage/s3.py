"""A blob store in an S3-compatible bucket: the key is the object key after the prefix.

A streamed blob is a multipart upload, invisible until it is completed: its parts are
uploaded by two threads while the writer fills the next one. The parts live in three
buffers allocated once per upload and reused (the writer waits for one to come back), and
each is sent as it is, with no copy: an upload holds 24 MiB with 8 MiB parts (parts grow
every thousand so that 10,000 are never needed, 48 MiB past 8 GB). A blob under one part
is one plain PUT at commit. Every failure becomes a StoreUnavailable whose message is one
sentence naming the storage (never a secret, never a repr), a client that cannot be set up
(a profile missing from the credentials file, say) too: it is that storage's failure.

The configured `storage_class` goes to the bulk of the bytes: streamed blobs (`create`:
archive bodies and recipes) and packs (`put` with `classed`). Small records (manifests,
drill records, host markers, chunk indexes and config) stay STANDARD: they are read by
every list, restore, drill and prune, and must never need a restore request first.

Checksums are computed only where an operation requires one (`when_required`), not the
CRC32 botocore adds by default to every part, PUT and GET: a pass over the bytes each,
over HTTPS a chunked copy of every part, and headers some S3-compatible servers refuse.
It proves less than what volkeep checks anyway: the manifest records the SHA-256 of the
stored archive, and every restore and drill verifies it before trusting a byte; and
without a checksum header SigV4 signs each body's SHA-256, which the server verifies.
(So a bucket with a default Object Lock retention, which wants Content-MD5 or a checksum
header on every upload, refuses these uploads.)
"""

from __future__ import annotations

import builtins
import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, cast

import boto3
import botocore.session
import structlog
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from daemon.config.model import S3StorageConfig
from daemon.storage.base import BlobExists, BlobMissing, Incomplete, StoreUnavailable

log = structlog.get_logger()

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.literals import StorageClassType
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        CreateMultipartUploadRequestTypeDef,
        HeadObjectOutputTypeDef,
        PutObjectRequestTypeDef,
    )

MIB = 1 << 20
PART_SIZE = 8 * MIB
PARTS_PER_SIZE = 1_000  # every thousand parts, the part size grows by PART_SIZE
MAX_PARTS = 10_000  # S3's limit
UPLOADING_THREADS = 2
PART_BUFFERS = UPLOADING_THREADS + 1  # the one being filled while the others are sent

CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "InvalidSecurity",
    }
)
DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
BlobData = bytes | bytearray | memoryview


def part_size(number: int) -> int:
    """Given a part's number (from 1), return its size: 8 MiB for the first thousand parts,
    16 MiB for the next thousand, and so on (10,000 parts hold about 440 GB)."""
    return PART_SIZE * (1 + (number - 1) // PARTS_PER_SIZE)


def _unavailable(message: str) -> StoreUnavailable:
    error = StoreUnavailable(message)
    error.strerror = message
    return error


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _causes(error: BaseException) -> Iterator[BaseException]:
    """Given an error, yield it and its causes, nearest first: those it was raised from or
    during, and those botocore and urllib3 wrap (an `error` keyword, an argument)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        kwargs = getattr(current, "kwargs", {})
        inner = kwargs.get("error") if isinstance(kwargs, dict) else None
        pending += [inner if isinstance(inner, BaseException) else None]
        pending += [current.__cause__, current.__context__]
        pending += [argument for argument in current.args if isinstance(argument, BaseException)]


def _network_reason(error: BaseException) -> str:
    """Given a connection error, return its cause in a few words ("connection refused")."""
    for cause in _causes(error):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
    return "no connection"


def _caused_by_timeout(error: BaseException) -> bool:
    """Given an error, say whether a socket timeout is among its causes. urllib3's
    NewConnectionError (a refused or unroutable connection) derives from its timeout
    class, but nothing timed out: it is no timeout."""
    return any(
        isinstance(cause, TimeoutError | Urllib3Timeout)
        and not isinstance(cause, NewConnectionError)
        for cause in _causes(error)
    )


class S3Store:
    """A BlobStore in an S3 bucket, under the configured prefix."""

    def __init__(self, config: S3StorageConfig) -> None:
        self.name = config.name
        self.config = config
        self.prefix = config.prefix
        self._where = config.endpoint or "AWS S3"
        self._lock = threading.Lock()
        self._clients: dict[int, S3Client] = {}

    @classmethod
    def from_config(cls, config: S3StorageConfig) -> S3Store:
        return cls(config)

    def describe(self) -> str:
        return f"s3://{self.config.bucket}/{self.prefix} at {self._where}"

    def create(self, key: str) -> S3Upload:
        return S3Upload(self, key)

    def put(
        self,
        key: str,
        data: bytes | bytearray | Iterable[bytes],
        *,
        exclusive: bool = False,
        classed: bool = False,
    ) -> None:
        self.write_object(key, data, exclusive=exclusive, classed=classed)

    def write_object(
        self,
        key: str,
        data: bytes | bytearray | Iterable[bytes],
        *,
        exclusive: bool = False,
        classed: bool = False,
    ) -> None:
        """Write a blob in one PUT; with `classed`, in the configured storage class (a pack,
        or an archive body too small for a multipart upload)."""
        body = data if isinstance(data, bytes | bytearray) else b"".join(data)
        request: PutObjectRequestTypeDef = {
            "Bucket": self.config.bucket,
            "Key": self.prefix + key,
            "Body": cast("bytes", body),  # botocore takes a bytearray as it is; the stubs don't say
        }
        if exclusive:
            request["IfNoneMatch"] = "*"
        if classed and self.config.storage_class:
            request["StorageClass"] = cast("StorageClassType", self.config.storage_class)
        try:
            self.client().put_object(**request)
        except ClientError as error:
            if exclusive and (_error_code(error) in CONFLICT_CODES or _http_status(error) == 412):
                if self._our_retried_put(error, key, body):
                    return
                raise BlobExists(key) from None
            raise self.failure(error, f"writing {key!r}") from error
        except (BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, f"writing {key!r}") from error

    def _our_retried_put(self, error: ClientError, key: str, body: bytes | bytearray) -> bool:
        """A conditional create whose first attempt landed but whose answer was lost is
        refused when retried: the blob there is then ours, byte for byte."""
        retried = error.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        if not retried:
            return False
        try:
            return self.get(key) == body
        except (BlobMissing, StoreUnavailable):
            return False

    def get(self, key: str) -> bytes:
        reader = self.open(key)
        try:
            return reader.read()
        finally:
            reader.close()

    def open(self, key: str) -> S3Reader:
        try:
            response = self.client().get_object(Bucket=self.config.bucket, Key=self.prefix + key)
        except ClientError as error:
            if _error_code(error) in MISSING_KEY_CODES:
                raise BlobMissing(key) from None
            raise self.failure(error, f"reading {key!r}") from error
        except (BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, f"reading {key!r}") from error
        return S3Reader(self, key, response["Body"])

    def exists(self, key: str) -> bool:
        try:
            self.client().head_object(Bucket=self.config.bucket, Key=self.prefix + key)
        except ClientError as error:
            if _error_code(error) not in MISSING_KEY_CODES:
                raise self.failure(error, f"looking for {key!r}") from error
            self._check_bucket()  # a missing bucket answers 404 too; that is no "absent"
            return False
        except (BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, f"looking for {key!r}") from error
        return True

    def size(self, key: str) -> int:
        return self._head(key)["ContentLength"]

    def modified(self, key: str) -> datetime:
        return self._head(key)["LastModified"]

    def _head(self, key: str) -> HeadObjectOutputTypeDef:
        try:
            return self.client().head_object(Bucket=self.config.bucket, Key=self.prefix + key)
        except ClientError as error:
            if _error_code(error) not in MISSING_KEY_CODES:
                raise self.failure(error, f"looking for {key!r}") from error
            self._check_bucket()  # a missing bucket answers 404 too
            raise BlobMissing(key) from None
        except (BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, f"looking for {key!r}") from error

    def _check_bucket(self) -> None:
        try:
            self.client().head_bucket(Bucket=self.config.bucket)
        except ClientError as error:
            if _http_status(error) == 404:
                raise self._missing_bucket() from None
            raise self.failure(error, "looking for the bucket") from error
        except (BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, "looking for the bucket") from error

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.config.bucket, Prefix=self.prefix + prefix)
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    yield entry["Key"][len(self.prefix) :]
        except (ClientError, BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, f"listing {prefix or 'the blobs'!r}") from error

    def list_directory(self, directory: str) -> Iterator[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        top = self.prefix + directory
        pages = paginator.paginate(Bucket=self.config.bucket, Prefix=top, Delimiter="/")
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    yield entry["Key"][len(top) :]
                for common in page.get("CommonPrefixes", []):
                    yield common["Prefix"][len(top) :]
        except (ClientError, BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, f"listing {directory or 'the top'!r}") from error

    def delete(self, key: str) -> None:
        try:
            self.client().delete_object(Bucket=self.config.bucket, Key=self.prefix + key)
        except ClientError as error:
            if _error_code(error) not in MISSING_KEY_CODES:
                raise self.failure(error, f"deleting {key!r}") from error
        except (BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, f"deleting {key!r}") from error

    def incomplete(self, directory: str) -> builtins.list[Incomplete]:
        # a prefix matches deeper keys too (another host's under the layout before host
        # names): only those directly in the directory are its
        paginator = self.client().get_paginator("list_multipart_uploads")
        pages = paginator.paginate(Bucket=self.config.bucket, Prefix=self.prefix + directory)
        found: builtins.list[Incomplete] = []
        try:
            for page in pages:
                for upload in page.get("Uploads", []):
                    key = upload["Key"][len(self.prefix) :]
                    if "/" not in key[len(directory) :]:
                        found.append(Incomplete(key, upload["Initiated"], None, upload["UploadId"]))
        except (ClientError, BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, "listing unfinished uploads") from error
        return found

    def remove_incomplete(self, upload: Incomplete) -> None:
        try:
            self.client().abort_multipart_upload(
                Bucket=self.config.bucket, Key=self.prefix + upload.key, UploadId=upload.handle
            )
        except ClientError as error:
            if _error_code(error) != "NoSuchUpload":
                raise self.failure(error, f"aborting the upload of {upload.key!r}") from error
        except (BotoCoreError, HTTPError, OSError) as error:
            raise self.failure(error, f"aborting the upload of {upload.key!r}") from error

    def begin_multipart(self, key: str) -> str:
        request: CreateMultipartUploadRequestTypeDef = {
            "Bucket": self.config.bucket,
            "Key": self.prefix + key,
        }
        if self.config.storage_class:
            request["StorageClass"] = cast("StorageClassType", self.config.storage_class)
        return self.client().create_multipart_upload(**request)["UploadId"]

    def client(self, *, attempts: int | None = None) -> S3Client:
        """Return the client that tries each request `attempts` times (default: the
        storage's max_attempts); built on first use, so that a store is cheap to make and a
        bad profile is an error of the operation, not of loading the config."""
        attempts = attempts or self.config.max_attempts
        with self._lock:
            if attempts not in self._clients:
                self._clients[attempts] = self._build_client(attempts)
            return self._clients[attempts]

    def _build_client(self, attempts: int) -> S3Client:
        config = self.config
        core = botocore.session.Session()
        if config.credentials_file is not None:
            if not os.access(config.credentials_file, os.R_OK):
                raise _unavailable(
                    f"storage {self.name!r}: cannot read the credentials file "
                    f"{config.credentials_file}"
                )
            core.set_config_variable("credentials_file", str(config.credentials_file))
            # an explicit profile makes the file win over AWS_* variables in the environment
            core.set_config_variable("profile", config.profile or "default")
        elif config.profile:
            core.set_config_variable("profile", config.profile)
        settings = Config(
            region_name=config.region,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"mode": "standard", "total_max_attempts": attempts},
            s3={"addressing_style": "path"} if config.path_style else None,
            max_pool_connections=UPLOADING_THREADS + 2,
            request_checksum_calculation="when_required",  # see the module's docstring
            response_checksum_validation="when_required",
        )
        try:
            # a profile missing from the credentials file is found here, by the session
            client = boto3.Session(botocore_session=core).client(
                "s3",
                endpoint_url=config.endpoint,
                verify=str(config.ca_bundle) if config.ca_bundle else None,
                config=settings,
            )
            retrying = partial(self._say_retrying, attempts)
            client.meta.events.register_first("needs-retry.s3", retrying)
            return client
        except (BotoCoreError, ValueError) as error:
            raise self.failure(error, "connecting") from error

    def _missing_bucket(self) -> StoreUnavailable:
        return _unavailable(
            f"storage {self.name!r}: bucket {self.config.bucket!r} does not exist at {self._where}"
        )

    def _timeout(self, error: BaseException) -> str | None:
        """Given an error of boto3, return which timeout ran out, as a phrase naming the
        endpoint and the setting ("http://s3:8333: no answer for 30 s (read_timeout)"); None
        if none did. A part's send that times out is "connection closed" to botocore: the
        timeout is found among the causes."""
        if isinstance(error, ConnectTimeoutError):
            seconds, setting = self.config.connect_timeout, "connect_timeout"
            return f"{self._where}: no connection within {seconds:g} s ({setting})"
        if isinstance(error, ReadTimeoutError) or _caused_by_timeout(error):
            seconds, setting = self.config.read_timeout, "read_timeout"
            return f"{self._where}: no answer for {seconds:g} s ({setting})"
        return None

    def _say_retrying(
        self,
        tries: int,
        *,
        attempts: int,
        caught_exception: BaseException | None = None,
        **_: object,
    ) -> None:
        """botocore's needs-retry hook, after each attempt (`attempts` so far) of a request
        tried up to `tries` times: log an attempt that timed out as it happens (botocore
        tries again in silence). Decide nothing: return None."""
        timeout = self._timeout(caught_exception) if caught_exception is not None else None
        if timeout is not None:
            then = f"attempt {attempts + 1} of {tries} follows" if attempts < tries else "gave up"
            log.warning(
                "the S3 endpoint does not answer", storage=self.name, problem=f"{timeout}; {then}"
            )

    def failure(self, error: BaseException, doing: str) -> StoreUnavailable:
        """Given an error of boto3 while `doing` something, return the StoreUnavailable that
        says in one sentence what went wrong."""
        storage = f"storage {self.name!r}"
        if isinstance(error, StoreUnavailable):
            return error
        if isinstance(error, ClientError):
            code = _error_code(error)
            if code in MISSING_BUCKET_CODES:
                return self._missing_bucket()
            if code in CREDENTIAL_CODES:
                return _unavailable(f"{storage}: the credentials were refused ({code})")
            if code in DENIED_CODES:
                return _unavailable(
                    f"{storage}: access to bucket {self.config.bucket!r} was denied "
                    f"while {doing} ({code}: wrong credentials or no permission)"
                )
            message = str(error.response.get("Error", {}).get("Message", "")).splitlines()
            detail = f": {message[0]}" if message and message[0] else ""
            status = _http_status(error)
            return _unavailable(
                f"{storage}: {doing} failed with {code or 'an error'} (HTTP {status}){detail}"
            )
        if isinstance(error, SSLError):
            return _unavailable(
                f"{storage}: TLS with {self._where} failed: {_network_reason(error)}"
            )
        if (timeout := self._timeout(error)) is not None:
            return _unavailable(f"{storage}: {timeout} while {doing}")
        if isinstance(error, EndpointConnectionError | ConnectTimeoutError):
            return _unavailable(f"{storage}: cannot reach {self._where}: {_network_reason(error)}")
        if isinstance(error, ConnectionClosedError | ResponseStreamingError | HTTPError):
            return _unavailable(f"{storage}: the connection to {self._where} broke while {doing}")
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            source = (
                f"in profile {self.config.profile or 'default'!r} of {self.config.credentials_file}"
                if self.config.credentials_file
                else "in the environment, the AWS profile or the instance metadata"
            )
            return _unavailable(f"{storage}: no complete S3 credentials found {source}")
        if isinstance(error, ProfileNotFound):
            return _unavailable(
                f"{storage}: profile {self.config.profile or 'default'!r} is not in "
                f"{self.config.credentials_file or 'the AWS config'}"
            )
        if isinstance(error, OSError) and error.strerror:
            return _unavailable(f"{storage}: {doing} failed: {error.strerror}")
        return _unavailable(f"{storage}: {doing} failed: {error}")


class S3Reader:
    """A blob being read from its GET response, a read's failure a StoreUnavailable.

    Reads go straight to the response (the archive readers ask for 1 MiB): one stream gives
    0.6-1 GB/s from SeaweedFS on loopback, several times what a restore consumes, and a
    read blocks for ~10% of a restore's reading, so ranged GETs ahead would not pay."""

    def __init__(self, store: S3Store, key: str, body: StreamingBody) -> None:
        self._store = store
        self._key = key
        self._body = body

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._body.read(None if size < 0 else size)
        except (BotoCoreError, HTTPError, OSError) as error:
            raise self._store.failure(error, f"reading {self._key!r}") from error

    def close(self) -> None:
        self._body.close()


class _PartBuffers:
    """The part buffers of one upload, allocated on first need and reused: at most `count`
    exist, and `take` waits for one to be given back when all are out."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._made = 0
        self._free: builtins.list[bytearray] = []
        self._given_back = threading.Condition()

    def take(self, size: int) -> bytearray:
        with self._given_back:
            while True:
                while self._free:
                    buffer = self._free.pop()
                    if len(buffer) == size:
                        return buffer
                    self._made -= 1  # a smaller part's (parts grow) or a last one: dropped
                if self._made < self._count:
                    self._made += 1
                    break
                self._given_back.wait()
        return bytearray(size)

    def give_back(self, buffer: bytearray) -> None:
        with self._given_back:
            self._free.append(buffer)
            self._given_back.notify()


class S3Upload:
    """A blob being written: parts filled here, uploaded by a small pool, completed by
    `commit`; the multipart upload begins with the first full part."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = key
        self._buffers = _PartBuffers(PART_BUFFERS)
        self._part: bytearray | None = None  # the part being filled, `_filled` bytes of it
        self._filled = 0
        self._parts_sent = 0
        self._upload_id: str | None = None
        self._etags: dict[int, str] = {}
        self._failure: StoreUnavailable | None = None
        self._lock = threading.Lock()
        self._finished = False
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: set[Future[None]] = set()

    def write(self, data: BlobData, /) -> int:
        self._check_usable()
        view = memoryview(data).cast("B")
        written = len(view)
        while view:
            if self._part is None:
                # waits while every buffer is being uploaded: this is the back pressure
                self._part = self._buffers.take(part_size(self._parts_sent + 1))
                self._raise_if_failed()
            piece = view[: len(self._part) - self._filled]
            self._part[self._filled : self._filled + len(piece)] = piece
            self._filled += len(piece)
            view = view[len(piece) :]
            if self._filled == len(self._part):
                self._send_part()
        return written

    def commit(self) -> None:
        self._check_usable()
        self._finished = True
        try:
            if self._upload_id is None:
                self._store.write_object(self._key, self._filled_part(), classed=True)
                return
            if self._filled:
                self._send_part()
            self._wait_for_parts()
            self._complete()
        except BaseException:
            self._cleanup()
            raise

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cleanup()

    def _check_usable(self) -> None:
        self._raise_if_failed()
        if self._finished:
            raise ValueError(f"the upload of {self._key!r} is already finished")

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _filled_part(self) -> bytearray:
        """Hand over the part being filled, cut to its filled bytes (in place: it is the
        last part, its buffer is not reused)."""
        part, filled = self._part if self._part is not None else bytearray(), self._filled
        self._part, self._filled = None, 0
        if filled < len(part):
            try:
                del part[filled:]
            except BufferError:  # still viewed (by a traceback, say): cut a copy
                part = part[:filled]
        return part

    def _send_part(self) -> None:
        number = self._parts_sent + 1
        if number > MAX_PARTS:
            self._fail(
                _unavailable(
                    f"storage {self._store.name!r}: {self._key!r} is larger than "
                    f"{MAX_PARTS:,} parts allow"
                )
            )
            self._raise_if_failed()
        if self._upload_id is None:
            self._upload_id = self._begin()
            self._pool = ThreadPoolExecutor(UPLOADING_THREADS, thread_name_prefix="s3-part")
        assert self._pool is not None
        part = self._filled_part()
        self._parts_sent = number
        future = self._pool.submit(self._upload_part, number, part)
        with self._lock:
            self._in_flight.add(future)
        # run when the upload ends, fails or is cancelled: the buffer is free again
        future.add_done_callback(partial(self._part_done, part))
        self._raise_if_failed()

    def _begin(self) -> str:
        try:
            return self._store.begin_multipart(self._key)
        except (ClientError, BotoCoreError, HTTPError, OSError) as error:
            failure = self._store.failure(error, f"beginning {self._key!r}")
            self._fail(failure)
            raise failure from error

    def _part_done(self, part: bytearray, future: Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(future)
        self._buffers.give_back(part)

    def _upload_part(self, number: int, part: bytearray) -> None:
        if self._failure is not None or self._upload_id is None:
            return
        try:
            # A bytearray body is signed and sent as it is, in one sendall (a file-like one
            # is read, and copied, in 16 KiB pieces). It goes without "Expect: 100-continue":
            # a part the server refuses is refused once sent, not before (rare, after an
            # accepted begin).
            response = self._store.client().upload_part(
                Bucket=self._store.config.bucket,
                Key=self._store.prefix + self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=cast("bytes", part),
            )
        except (ClientError, BotoCoreError, HTTPError, OSError) as error:
            failure = self._store.failure(error, f"writing part {number} of {self._key!r}")
            self._fail(failure)
            raise failure from error
        self._etags[number] = response["ETag"]

    def _wait_for_parts(self) -> None:
        """Return when every part is uploaded; raise as soon as one has failed (the others'
        retries are not waited for)."""
        with self._lock:
            in_flight = set(self._in_flight)
        futures.wait(in_flight, return_when=futures.FIRST_EXCEPTION)
        self._raise_if_failed()

    def _complete(self) -> None:
        assert self._upload_id is not None
        parts: list[CompletedPartTypeDef] = [
            {"PartNumber": number, "ETag": self._etags[number]} for number in sorted(self._etags)
        ]
        try:
            self._store.client().complete_multipart_upload(
                Bucket=self._store.config.bucket,
                Key=self._store.prefix + self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except (ClientError, BotoCoreError, HTTPError, OSError) as error:
            raise self._store.failure(error, f"completing {self._key!r}") from error

    def _fail(self, failure: StoreUnavailable) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = failure

    def _cleanup(self) -> None:
        """Stop the workers and abort the multipart upload, once and briefly: one that
        cannot be aborted now is garbage for `daemon.repository.garbage` to remove."""
        self._fail(
            _unavailable(f"storage {self._store.name!r}: the upload of {self._key!r} was aborted")
        )
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._part = None
        if self._upload_id is None:
            return
        # abort never raises: a leftover is garbage, collected later
        with contextlib.suppress(Exception):
            self._store.client(attempts=2).abort_multipart_upload(
                Bucket=self._store.config.bucket,
                Key=self._store.prefix + self._key,
                UploadId=self._upload_id,
            )
