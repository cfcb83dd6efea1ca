"""Encryption at rest, restic's model: a random master key, wrapped by password-derived keys in key slots.

Format
------

``config.json`` of an encrypted repository has one more member (plain repositories have none, and stay
exactly as they were)::

    "encryption": {"cipher": "aes-256-gcm", "ids": "hmac-sha256", "kdf": "scrypt"}

**Key slots** ``keys/<key_id>`` (``key_id`` = sha256 hex of the file's bytes, so a flipped byte is caught
by ``verify`` without any password), one per password, JSON::

    {"format": "aml-key", "version": 1, "created": "<ISO UTC>", "hostname": ..., "username": ...,
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<base64, 32 bytes>"},
     "data": "<base64 of a sealed object (below) holding the master key>"}

The password and the stored parameters give a 256-bit key (scrypt); it unseals ``data`` (associated data
``aml-key``), which is the JSON ``{"encrypt": "<base64 32 bytes>", "mac": "<base64 32 bytes>"}``: the
repository's **master key**, random, the same in every slot. Adding a password adds a slot; removing one
never removes the last.

**Sealed objects**: every pack, index file, manifest header and body, and compression dictionary of an
encrypted repository is stored as::

    b"AMLSEAL\\x01" (8 bytes) | nonce (12 random bytes) | AES-256-GCM ciphertext + 16-byte tag

with associated data naming the kind of object (``pack``, ``index``, ``body``, ``dict``,
``header:<backup_id>``), so a file cannot be passed off as another kind, nor a header as another
snapshot's. Whole packs are sealed at once (one AES-GCM call per ~16 MiB: GB/s), never single objects.
Files are still named by the sha256 of their *stored* bytes, so the checker's hash check finds any flipped
byte without the key, and names the file; decryption failure (the tag) is reported the same way.

**Object ids** in an encrypted repository are HMAC-SHA256 (``mac`` key) of the plaintext instead of its
sha256, so ids reveal no content hash (two repositories with different keys give the same content
different ids). A manifest's per-file ``sha256`` column (the content's id) is keyed the same way.

The password reaches the engine through :class:`~aml.backup.repository.Repository` (``password=``):
opening an encrypted repository unlocks the master key and registers it in this process for the
repository's path (:func:`register`), where every engine function that reads or writes the repository by
path finds it (:func:`key_for`). Passwords are never written anywhere, logged or returned.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from aml.store.timestamps import utc_iso_z

from ._common import hostname
from .errors import CorruptionError, PasswordRequired

MAGIC = b"AMLSEAL\x01"
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = len(MAGIC) + NONCE_SIZE + TAG_SIZE
"""Bytes a sealed object adds to its plaintext (36)."""
CIPHER = "aes-256-gcm"
KEY_FORMAT = "aml-key"
KEY_AAD = b"aml-key"
DEFAULT_KDF: dict[str, int] = {"n": 2**15, "r": 8, "p": 1}
"""scrypt parameters of new key slots (restic's defaults: N=2^15, r=8, p=1; ~32 MiB, ~0.1 s)."""
ENCRYPTION_CONFIG: dict[str, str] = {"cipher": CIPHER, "ids": "hmac-sha256", "kdf": "scrypt"}

__all__ = [
    "DEFAULT_KDF",
    "ENCRYPTION_CONFIG",
    "OVERHEAD",
    "DecryptError",
    "KeySlot",
    "MasterKey",
    "forget",
    "id_function",
    "id_hasher",
    "is_encrypted",
    "key_for",
    "make_key_slot",
    "open_key_slot",
    "register",
    "seal_for",
    "unseal_for",
]


class DecryptError(ValueError):
    """A sealed object does not authenticate (wrong key, or a flipped byte) or is not sealed at all."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    return base64.b64decode(str(text), validate=True)


class MasterKey:
    """A repository's master key: an AES-256-GCM key for contents and an HMAC key for object ids.

    Args:
        encrypt: 32 bytes.
        mac: 32 bytes.
    """

    def __init__(self, encrypt: bytes, mac: bytes) -> None:
        if len(encrypt) != 32 or len(mac) != 32:
            raise ValueError("master key parts must be 32 bytes each")
        self.encrypt_key = encrypt
        self.mac_key = mac
        self._aead = AESGCM(encrypt)

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"

    @classmethod
    def generate(cls) -> MasterKey:
        """A new random master key."""
        return cls(os.urandom(32), os.urandom(32))

    def to_bytes(self) -> bytes:
        """The JSON form sealed inside key slots."""
        return json.dumps({"encrypt": _b64(self.encrypt_key), "mac": _b64(self.mac_key)}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKey:
        """Parse :meth:`to_bytes`' output."""
        doc = json.loads(raw)
        return cls(_unb64(doc["encrypt"]), _unb64(doc["mac"]))

    def seal(self, data: bytes | memoryview, aad: bytes) -> bytes:
        """Encrypt and authenticate ``data`` (see the module docstring for the layout)."""
        nonce = os.urandom(NONCE_SIZE)
        return MAGIC + nonce + self._aead.encrypt(nonce, bytes(data) if isinstance(data, memoryview) else data, aad)

    def unseal(self, data: bytes | memoryview | Any, aad: bytes) -> bytes:
        """Decrypt a sealed object.

        Raises:
            DecryptError: not a sealed object, or it does not authenticate (damaged, or another key/kind).
        """
        if len(data) < OVERHEAD or bytes(data[: len(MAGIC)]) != MAGIC:
            raise DecryptError("not an encrypted object (bad magic or too short)")
        nonce = bytes(data[len(MAGIC) : len(MAGIC) + NONCE_SIZE])
        try:
            return self._aead.decrypt(nonce, data[len(MAGIC) + NONCE_SIZE :], aad)
        except InvalidTag as exc:
            raise DecryptError("authentication failed (damaged, or not this repository's key)") from exc

    def hasher(self) -> Callable[..., Any]:
        """``hasher(data=b"")``: a keyed hash object (``update``, ``hexdigest``) for object ids."""
        return partial(hmac.new, self.mac_key, digestmod="sha256")

    def object_id(self, data: bytes | memoryview) -> str:
        """The id (HMAC-SHA256 hex) of one whole object: ``hasher(data).hexdigest()`` in one C call
        (``hmac.digest``), about twice as fast when two threads hash."""
        return hmac.digest(self.mac_key, data, "sha256").hex()


@dataclass(frozen=True)
class KeySlot:
    """A key slot's public part (what ``backup key list`` shows; no secret).

    Attributes:
        id: sha256 hex of the slot file's bytes (its name under ``keys/``).
        created: ISO UTC time.
        hostname, username: where it was added.
        kdf: ``{"name", "n", "r", "p"}`` (the salt is left out).
    """

    id: str
    created: str
    hostname: str
    username: str
    kdf: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"id": self.id, "created": self.created, "hostname": self.hostname, "username": self.username,
                "kdf": dict(self.kdf)}


def _derive(password: bytes, kdf: dict[str, Any]) -> bytes:
    if kdf.get("name") != "scrypt":
        raise ValueError(f"unsupported key derivation {kdf.get('name')!r}")
    return Scrypt(salt=_unb64(kdf["salt"]), length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])).derive(
        password)


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no passwd entry
        return ""


def make_key_slot(master: MasterKey, password: bytes, *, kdf: dict[str, int] | None = None) -> tuple[str, bytes]:
    """Wrap ``master`` under ``password``.

    Args:
        master: the repository's master key.
        password: the password's bytes.
        kdf: scrypt ``{"n", "r", "p"}`` (default :data:`DEFAULT_KDF`).

    Returns:
        ``(key id, file bytes)``.
    """
    params = dict(DEFAULT_KDF if kdf is None else kdf)
    kdoc: dict[str, Any] = {"name": "scrypt", "n": params["n"], "r": params["r"], "p": params["p"],
                            "salt": _b64(os.urandom(32))}
    wrapping = MasterKey(_derive(password, kdoc), b"\x00" * 32)
    doc = {
        "format": KEY_FORMAT,
        "version": 1,
        "created": utc_iso_z(datetime.now(UTC)),
        "hostname": hostname(),
        "username": _username(),
        "kdf": kdoc,
        "data": _b64(wrapping.seal(master.to_bytes(), KEY_AAD)),
    }
    raw = json.dumps(doc, indent=2).encode() + b"\n"
    return hashlib.sha256(raw).hexdigest(), raw


def parse_key_slot(key_id: str, raw: bytes) -> tuple[KeySlot, dict[str, Any]]:
    """Parse a slot file's bytes into its public part and document.

    Raises:
        ValueError: it does not parse, or its sha256 differs from its id.
    """
    if hashlib.sha256(raw).hexdigest() != key_id:
        raise ValueError("sha256 of the file differs from its name")
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise ValueError("not an aml key slot")
    kdf = {k: v for k, v in dict(doc["kdf"]).items() if k != "salt"}
    return KeySlot(key_id, str(doc.get("created", "")), str(doc.get("hostname", "")), str(doc.get("username", "")),
                   kdf), doc


def open_key_slot(doc: dict[str, Any], password: bytes) -> MasterKey | None:
    """The master key in a parsed slot document, or None when ``password`` does not open it."""
    try:
        wrapping = MasterKey(_derive(password, doc["kdf"]), b"\x00" * 32)
        return MasterKey.from_bytes(wrapping.unseal(_unb64(doc["data"]), KEY_AAD))
    except (DecryptError, KeyError, TypeError, ValueError):
        return None


# the keys unlocked in this process, by repository path ---------------------------------------------------
_UNLOCKED: dict[str, tuple[str, MasterKey]] = {}
_LOCK = threading.Lock()


def _config(root: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((root / "config.json").read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_encrypted(root: Path | str) -> bool:
    """Whether the repository at ``root`` is encrypted (its ``config.json`` says so; no key needed)."""
    doc = _config(Path(root))
    return bool(doc and doc.get("encryption"))


def register(root: Path | str, repo_id: str, key: MasterKey) -> None:
    """Make ``key`` the unlocked master key of the repository at ``root`` (id ``repo_id``) in this process."""
    with _LOCK:
        _UNLOCKED[os.path.abspath(os.fspath(root))] = (repo_id, key)


def forget(root: Path | str) -> None:
    """Drop the unlocked key of the repository at ``root`` (if any)."""
    with _LOCK:
        _UNLOCKED.pop(os.path.abspath(os.fspath(root)), None)


def key_for(root: Path | str) -> MasterKey | None:
    """The master key of the repository at ``root``: None for a plain repository.

    Raises:
        PasswordRequired: the repository is encrypted and was not unlocked in this process.
    """
    root = Path(os.path.abspath(os.fspath(root)))
    doc = _config(root)
    if doc is None or not doc.get("encryption"):
        return None
    entry = _UNLOCKED.get(str(root))
    if entry is None or entry[0] != doc.get("id"):
        raise PasswordRequired(
            f"repository is encrypted; a password is required (--password-file, AML_BACKUP_PASSWORD_FILE): {root}")
    return entry[1]


def id_hasher(root: Path | str) -> Callable[..., Any]:
    """``hasher(data=b"")`` making object ids of the repository at ``root``: sha256, or keyed HMAC-SHA256."""
    key = key_for(root)
    return hashlib.sha256 if key is None else key.hasher()


def _sha256_id(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def id_function(root: Path | str) -> Callable[[bytes | memoryview], str]:
    """``object_id(data) -> hex id`` of whole objects in the repository at ``root``: sha256, or keyed
    HMAC-SHA256 (:meth:`MasterKey.object_id`); the same ids as :func:`id_hasher`."""
    key = key_for(root)
    return _sha256_id if key is None else key.object_id


def seal_for(key: MasterKey | None, data: bytes, aad: bytes) -> bytes:
    """``data`` as stored: sealed under ``key``, or unchanged when ``key`` is None (plain repository)."""
    return data if key is None else key.seal(data, aad)


def unseal_for(key: MasterKey | None, data: Any, aad: bytes, location: str) -> Any:
    """The plaintext of stored ``data`` (unchanged for a plain repository).

    Raises:
        CorruptionError: the object does not authenticate (naming ``location``).
    """
    if key is None:
        return data
    try:
        return key.unseal(data, aad)
    except DecryptError as exc:
        raise CorruptionError(f"{location}: cannot decrypt: {exc}", location=location) from exc
