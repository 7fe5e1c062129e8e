"""The age keys a policy names: recipients (public keys) to encrypt to, and identity files
(secret keys) to decrypt with. Parsed here, for the config's validation and for the
archive's encryption alike.

Secrets never leave this module in text: no error message, repr or str holds an identity
or the content of an identity file; errors name the file (and line) only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pyrage
from pyrage import ssh, x25519

from daemon.errors import VolkeepError

IDENTITY_FILE_LIMIT = 1 << 20  # an identity file is a few lines; refuse to slurp a disk

_SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
_SECRET_PREFIXES = ("AGE-SECRET-KEY-", "AGE-PLUGIN-")


class EncryptionError(VolkeepError, ValueError):
    """A recipient, identity or age stream that cannot be used; the message is safe to show."""


@dataclass(frozen=True)
class Recipient:
    """A public key to encrypt to; `text` is its canonical form, as recorded in manifests."""

    text: str
    native: object = field(repr=False, compare=False)

    def __str__(self) -> str:
        return self.text


def parse_recipient(text: str) -> Recipient:
    """Given an age (`age1…`) or ssh (`ssh-ed25519 …`, `ssh-rsa …`) public key, return it.

    Raise EncryptionError if it is none of these; the message quotes the text only when it
    has the shape of a public key, so a secret pasted by mistake is never echoed.
    """
    stripped = text.strip()
    if stripped.upper().startswith(_SECRET_PREFIXES):
        raise EncryptionError(
            "an age identity (a secret key) was given where a recipient (a public key) belongs;"
            " give its public key instead (age-keygen -y)"
        )
    if stripped.lower().startswith("age1"):
        return _parse_age_recipient(stripped)
    words = stripped.split()
    if words and words[0] in _SSH_TYPES:
        canonical = " ".join(words[:2])
        try:
            return Recipient(canonical, ssh.Recipient.from_str(canonical))
        except pyrage.RecipientError:
            raise EncryptionError(f"invalid {words[0]} recipient {canonical!r}") from None
    if words and words[0].startswith("ssh-"):
        raise EncryptionError(
            f"unsupported ssh key type {words[0]!r}: use ssh-ed25519 or ssh-rsa, or an age key"
        )
    raise EncryptionError(
        "not a recipient: expected an age public key (age1…) or an ssh-ed25519 or ssh-rsa"
        " public key"
    )


def _parse_age_recipient(text: str) -> Recipient:
    # Bech32: the human-readable part ends at the last "1" ("age" for X25519 keys,
    # "age1NAME" for plugin recipients, which would need a plugin binary at decryption).
    kind = text[: text.rfind("1")].lower()
    if kind != "age":
        raise EncryptionError(f"unsupported age recipient type {kind!r} in {text!r}")
    try:
        return Recipient(text.lower(), x25519.Recipient.from_str(text.lower()))
    except pyrage.RecipientError as error:
        raise EncryptionError(f"invalid age recipient {text!r}: {error}") from None


def load_recipients_file(path: str | os.PathLike[str]) -> list[Recipient]:
    """Given a file of recipients, one a line (`#` comments and blank lines skipped), return them.

    Raise EncryptionError naming the file (and line) if it cannot be read, holds a line
    that is not a recipient, or holds none.
    """
    lines = _read_text(path, "recipients file").splitlines()
    recipients = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            recipients.append(parse_recipient(line))
        except EncryptionError as error:
            raise EncryptionError(f"{path}:{number}: {error}") from None
    if not recipients:
        raise EncryptionError(f"recipients file {path} holds no recipient")
    return recipients


def recipient_strings(recipients: Iterable[Recipient]) -> list[str]:
    """Given recipients, return their public strings, to record in a manifest."""
    return [recipient.text for recipient in recipients]


class Identities:
    """The secret keys of one identity file; shows its path and count, never a key."""

    def __init__(self, path: str, natives: Sequence[object], mode: int) -> None:
        self.path = path
        self._natives = list(natives)
        self.mode = stat.S_IMODE(mode)

    @property
    def too_open(self) -> bool:
        """Whether the group or others may read the file (the caller warns)."""
        return bool(self.mode & 0o044)

    def __len__(self) -> int:
        return len(self._natives)

    def __repr__(self) -> str:
        return f"Identities(path={self.path!r}, count={len(self._natives)})"

    __str__ = __repr__

    def natives(self) -> list[object]:
        """The pyrage identities, for decryption."""
        return list(self._natives)

    def unmatched(self, recipients: Iterable[Recipient]) -> list[str] | None:
        """Given the recipients archives are encrypted to, return them if none is the public
        key of one of these identities (none of them opens a new archive), else None.

        An ssh identity's public key is not derived here: a file holding one is trusted."""
        ages = [native for native in self._natives if isinstance(native, x25519.Identity)]
        if len(ages) < len(self._natives):
            return None
        own = {str(native.to_public()) for native in ages}
        wanted = recipient_strings(recipients)
        return None if own & set(wanted) else wanted

    def __reduce__(self) -> NoReturn:
        raise TypeError("identities are not to be pickled")


def load_identities(path: str | os.PathLike[str]) -> Identities:
    """Given an age identity file, return its identities.

    The file holds `AGE-SECRET-KEY-1…` lines (any number: old keys stay after a rotation)
    with `#` comments and blank lines, or is an unencrypted OpenSSH private key (ed25519 or
    RSA). Raise EncryptionError naming the file (and line), never its content, if it is
    missing, unreadable, or holds no usable identity.
    """
    where = os.fspath(path)
    data, mode = _read_secret(where)
    if data.lstrip().startswith((b"age-encryption.org/", b"-----BEGIN AGE ENCRYPTED FILE-----")):
        raise EncryptionError(
            f"identity file {where} is itself encrypted (age -p); give it decrypted, mode 0600"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EncryptionError(f"identity file {where} is not text") from None
    del data
    if text.lstrip().startswith("-----BEGIN"):
        return Identities(where, [_ssh_identity(where, text)], mode)
    natives = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.upper().startswith("AGE-PLUGIN-"):
            raise EncryptionError(f"{where}:{number}: plugin identities are not supported")
        if stripped.lower().startswith(("age1", *_SSH_TYPES)):
            raise EncryptionError(
                f"{where}:{number}: a public key (a recipient), not an identity: give the file"
                " of the secret key (AGE-SECRET-KEY-1…, age-keygen's output)"
            )
        try:
            natives.append(x25519.Identity.from_str(stripped.upper()))
        except pyrage.IdentityError:
            raise EncryptionError(f"{where}:{number}: not an age identity") from None
    del text
    if not natives:
        raise EncryptionError(f"identity file {where} holds no identity")
    return Identities(where, natives, mode)


def _ssh_identity(where: str, text: str) -> object:
    try:
        native: object = ssh.Identity.from_buffer(text.encode())
    except pyrage.IdentityError as error:
        if "decrypted" in str(error):
            reason = "a passphrase-protected ssh key (remove the passphrase or use an age key)"
        else:
            reason = "not a supported ssh private key (ed25519 or RSA, OpenSSH format)"
        raise EncryptionError(f"identity file {where}: {reason}") from None
    return native


def _read_secret(where: str) -> tuple[bytes, int]:
    try:
        # O_NONBLOCK: a FIFO in its place would otherwise block the open until a writer came
        descriptor = os.open(where, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(descriptor, "rb") as file:
            mode = os.fstat(descriptor).st_mode
            if not stat.S_ISREG(mode):
                raise EncryptionError(f"identity file {where} is not a regular file")
            data = file.read(IDENTITY_FILE_LIMIT + 1)
    except OSError as error:
        raise EncryptionError(f"identity file {where}: {_os_reason(error)}") from None
    if len(data) > IDENTITY_FILE_LIMIT:
        raise EncryptionError(f"identity file {where} is too large to be an identity file")
    return data, mode


def _read_text(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise EncryptionError(f"{what} {os.fspath(path)}: {_os_reason(error)}") from None
    except UnicodeDecodeError:
        raise EncryptionError(f"{what} {os.fspath(path)} is not text") from None


def _os_reason(error: OSError) -> str:
    return error.strerror.lower() if error.strerror else type(error).__name__
