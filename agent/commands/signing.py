"""Ed25519 signatures of command envelopes: the only module that imports PyNaCl (libsodium).

The signed bytes are the envelope without `sig`, as JSON with sorted keys, separators `,` `:`,
no ASCII escaping, UTF-8 (PROTOCOL.md, Signing). The agent re-serialises what it parsed, so the
signature covers the meaning of the request, not its whitespace. Signers that are not Python
should use integer times: float formatting differs between JSON libraries.

Operators hold private keys (`edge-agent keygen`); nodes list the public halves in
`commands.trusted_keys`, and a key's id is its file stem (`ops-1.pub` → `ops-1`).

Key files are PEM as OpenSSL and `cryptography` write them: the public key as SubjectPublicKeyInfo
(`BEGIN PUBLIC KEY`), the private key as unencrypted PKCS#8 (`BEGIN PRIVATE KEY`, v1, or v2 with
the public key attached). For Ed25519 both are a fixed DER prefix and 32 raw bytes (RFC 8410), so
they are read and written here without an ASN.1 library; keys made before PyNaCl replaced
`cryptography` (0.1.0) load unchanged. Only PyNaCl's thin `nacl.bindings` layer is used, and
only from the first signature checked or made: a node without keys never loads libsodium.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.errors import AgentError

KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SIGNATURE_BYTES = 64
KEY_BYTES = 32
NO_KEYS = "commands are disabled: no trusted keys"
# RFC 8410: DER of SubjectPublicKeyInfo and of PKCS#8 v1 PrivateKeyInfo for id-Ed25519 (1.3.101.112)
# up to the 32 key bytes; v2 (OneAsymmetricKey) adds `[1] publicKey` after the seed.
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
PKCS8_V1_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
PKCS8_V2_PREFIX = bytes.fromhex("3051020101300506032b657004220420")
PKCS8_V2_PUBLIC = bytes.fromhex("812100")
PEM_RE = re.compile(rb"-----BEGIN ([A-Z ]+)-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END \1-----")


class SigningError(AgentError):
    """A key file cannot be read or is not an Ed25519 key; `problems` names each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def signed_bytes(body: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the envelope without `sig`, canonical JSON, UTF-8."""
    unsigned = {key: value for key, value in body.items() if key != "sig"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def pem_der(text: bytes, label: str) -> bytes | None:
    """The DER inside the first PEM block labelled `label`, or None when there is none."""
    for match in PEM_RE.finditer(text):
        if match.group(1).decode() == label:
            try:
                return base64.b64decode(b"".join(match.group(2).split()), validate=True)
            except (binascii.Error, ValueError):
                return None
    return None


def public_key_bytes(pem: bytes) -> bytes | None:
    """The raw Ed25519 public key of a SubjectPublicKeyInfo PEM; None if it is not one."""
    der = pem_der(pem, "PUBLIC KEY")
    if der is None or len(der) != len(SPKI_PREFIX) + KEY_BYTES or not der.startswith(SPKI_PREFIX):
        return None
    return der[len(SPKI_PREFIX) :]


def private_key_seed(pem: bytes) -> bytes | None:
    """The 32-byte Ed25519 seed of an unencrypted PKCS#8 PEM (v1 or v2); None if not one."""
    der = pem_der(pem, "PRIVATE KEY")
    if der is None:
        return None
    seed_end = len(PKCS8_V1_PREFIX) + KEY_BYTES
    if len(der) == seed_end and der.startswith(PKCS8_V1_PREFIX):
        return der[len(PKCS8_V1_PREFIX) :]
    v2_length = seed_end + len(PKCS8_V2_PUBLIC) + KEY_BYTES
    if (
        len(der) == v2_length
        and der.startswith(PKCS8_V2_PREFIX)
        and der[seed_end : seed_end + len(PKCS8_V2_PUBLIC)] == PKCS8_V2_PUBLIC
    ):
        return der[len(PKCS8_V2_PREFIX) : seed_end]
    return None


def _pem(label: str, der: bytes) -> bytes:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def public_pem(raw: bytes) -> bytes:
    """A raw 32-byte Ed25519 public key as the PEM `commands.trusted_keys` files hold."""
    return _pem("PUBLIC KEY", SPKI_PREFIX + raw)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningError([f"{path}: cannot read ({exc.strerror or exc})"]) from exc


def _read_public_key(path: Path) -> bytes:
    raw = public_key_bytes(_read(path))
    if raw is None:
        raise SigningError([f"{path}: not a PEM public key (Ed25519 SubjectPublicKeyInfo)"])
    return raw


class Verifier:
    """Checks signatures against the trusted operator keys of this node."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        """`keys`: key id → raw 32-byte Ed25519 public key."""
        self._keys = dict(keys)

    @classmethod
    def from_files(cls, paths: Iterable[str]) -> Verifier:
        """Load every `commands.trusted_keys` file; key id = file stem.

        Raises:
            SigningError: naming every unreadable, malformed or duplicate key at once.
        """
        keys: dict[str, bytes] = {}
        problems: list[str] = []
        for name in paths:
            path = Path(name)
            key_id = path.stem
            if not KEY_ID_RE.fullmatch(key_id):
                problems.append(f"{path}: key id {key_id!r} must be 1-64 of [A-Za-z0-9._-]")
            elif key_id in keys:
                problems.append(f"{path}: key id {key_id!r} is listed twice")
            else:
                try:
                    keys[key_id] = _read_public_key(path)
                except SigningError as exc:
                    problems.extend(exc.problems)
        if problems:
            raise SigningError(problems)
        return cls(keys)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, body: Mapping[str, Any]) -> str | None:
        """None when `sig` is a valid signature by `key_id`; else why not, for a person."""
        key_id, sig = body.get("key_id"), body.get("sig")
        if sig is None or key_id is None:
            return "missing signature: a signed command needs both key_id and sig"
        if not isinstance(key_id, str) or not isinstance(sig, str):
            return "key_id and sig must be strings"
        key = self._keys.get(key_id)
        if key is None:
            known = ", ".join(self.key_ids) or "none"
            return f"unknown key_id {key_id[:64]!r}: this node trusts {known}"
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            return "sig is not valid base64"
        if len(raw) != SIGNATURE_BYTES:
            return f"sig must be {SIGNATURE_BYTES} bytes (Ed25519), got {len(raw)}"
        # nacl.bindings alone (not nacl.signing and its Curve25519 classes): libsodium is
        # loaded at the first signature checked, never on a node that only reads statuses.
        from nacl.bindings import crypto_sign_open
        from nacl.exceptions import BadSignatureError

        try:
            crypto_sign_open(raw + signed_bytes(body), key)
        except BadSignatureError:
            return f"bad signature: the command was altered after signing or not signed by {key_id}"
        return None

    def authenticate(
        self, body: Mapping[str, Any], *, mutating: bool, allow_unsigned: bool
    ) -> str | None:
        """The signing rules of PROTOCOL.md: None when the request may proceed, else why not.

        A present signature is always checked; an absent one is fine for read-only requests
        and, with `allow_unsigned`, for all requests.
        """
        if mutating and not self._keys and not allow_unsigned:
            return (
                f"{NO_KEYS} (commands.trusted_keys is empty and commands.allow_unsigned is"
                " false): add an operator public key to this node"
            )
        if "sig" in body or "key_id" in body:
            return self.verify(body)
        if mutating and not allow_unsigned:
            return "missing signature: commands that change the node must be signed (key_id, sig)"
        return None


class Signer:
    """An operator's private key, used by `edge-agent send`."""

    def __init__(self, key_id: str, seed: bytes) -> None:
        """`seed`: the 32-byte Ed25519 private key (RFC 8032's secret, PKCS#8's content)."""
        from nacl.bindings import crypto_sign_seed_keypair

        self.key_id = key_id
        self.public_key, self._secret = crypto_sign_seed_keypair(seed)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """Load NAME.key; the key id is NAME.

        Raises:
            SigningError: unreadable file, or not an unencrypted Ed25519 private key.
        """
        seed = private_key_seed(_read(path))
        if seed is None:
            raise SigningError([f"{path}: not an unencrypted PEM private key (Ed25519 PKCS#8)"])
        return cls(path.stem, seed)

    def sign(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The envelope with `key_id` set and `sig` over everything else."""
        unsigned = {k: v for k, v in body.items() if k != "sig"}
        unsigned["key_id"] = self.key_id
        from nacl.bindings import crypto_sign

        signature = crypto_sign(signed_bytes(unsigned), self._secret)[:SIGNATURE_BYTES]
        return {**unsigned, "sig": base64.b64encode(signature).decode("ascii")}


def generate(name: str, directory: Path) -> tuple[Path, Path]:
    """Write NAME.key (private, mode 0600) and NAME.pub; refuse to overwrite either.

    Raises:
        SigningError: bad name, existing files, or the directory is not writable.
    """
    if not KEY_ID_RE.fullmatch(name):
        raise SigningError([f"key name {name!r} must be 1-64 of [A-Za-z0-9._-]"])
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningError([f"{path}: already exists; not overwriting a key"])
    seed = secrets.token_bytes(KEY_BYTES)
    private_pem = _pem("PRIVATE KEY", PKCS8_V1_PREFIX + seed)
    public = public_pem(Signer(name, seed).public_key)
    try:
        _write_new(private_path, private_pem, 0o600)
        _write_new(public_path, public, 0o644)
    except FileExistsError as exc:
        raise SigningError([f"{exc.filename}: already exists; not overwriting a key"]) from exc
    except OSError as exc:
        raise SigningError([f"cannot write keys: {exc.strerror or exc}"]) from exc
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never clobber a key; the mode is set at creation, so the private key is never
    # readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
