"""Ed25519 signing: valid, tampered, unknown key, malformed, and the signature policy."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.commands import signing
from agent.commands.signing import Signer, SigningError, Verifier
from agent.errors import ConfigError
from tests.paths import REPO


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Signer, Verifier, Path]:
    private, public = signing.generate("ops-1", tmp_path)
    return Signer.from_file(private), Verifier.from_files([str(public)]), tmp_path


def body(**changes: Any) -> dict[str, Any]:
    base = {
        "v": 1,
        "id": "c-1",
        "verb": "addon",
        "target": "pi-01",
        "args": {"name": "dns", "action": "enable", "args": ["é"]},
        "issued_at": 1764160000,
    }
    base.update(changes)
    return base


def test_signed_bytes_are_canonical() -> None:
    data = signing.signed_bytes({"b": 1, "a": "é", "sig": "ignored", "c": {"y": 1, "x": [1, 2]}})
    assert data == '{"a":"é","b":1,"c":{"x":[1,2],"y":1}}'.encode()


def test_valid_signature(keys: tuple[Signer, Verifier, Path]) -> None:
    signer, verifier, _ = keys
    signed = signer.sign(body())
    assert signed["key_id"] == "ops-1"
    assert len(base64.b64decode(signed["sig"])) == 64
    assert verifier.verify(signed) is None
    # Re-serialised with other whitespace and key order: still valid (meaning is signed).
    reparsed = json.loads(json.dumps(signed, indent=3, sort_keys=False, ensure_ascii=True))
    assert verifier.verify(reparsed) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", "pi-02"),
        ("verb", "join"),
        ("issued_at", 1764160001),
        ("args", {"name": "dns", "action": "disable", "args": ["é"]}),
        ("expires_at", 1764160100),  # adding a field the signer did not sign
    ],
)
def test_tampered_envelope_is_rejected(
    keys: tuple[Signer, Verifier, Path], field: str, value: object
) -> None:
    signer, verifier, _ = keys
    signed = signer.sign(body())
    signed[field] = value
    assert "bad signature" in (verifier.verify(signed) or "")


def test_key_id_is_covered_by_the_signature(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    signing.generate("ops-1", first)
    _, pub2 = signing.generate("ops-2", second)
    signer = Signer.from_file(first / "ops-1.key")
    verifier = Verifier.from_files([str(first / "ops-1.pub"), str(pub2)])
    signed = signer.sign(body())
    signed["key_id"] = "ops-2"
    assert "bad signature" in (verifier.verify(signed) or "")


def test_unknown_key_and_malformed_signatures(keys: tuple[Signer, Verifier, Path]) -> None:
    signer, verifier, tmp_path = keys
    signed = signer.sign(body())
    assert "unknown key_id 'ops-9': this node trusts ops-1" in (
        verifier.verify({**signed, "key_id": "ops-9"}) or ""
    )
    assert verifier.verify({**signed, "sig": "***"}) == "sig is not valid base64"
    short = base64.b64encode(b"x" * 10).decode()
    assert "must be 64 bytes" in (verifier.verify({**signed, "sig": short}) or "")
    assert verifier.verify({**signed, "sig": 5}) == "key_id and sig must be strings"
    assert "missing signature" in (verifier.verify({**body(), "key_id": "ops-1"}) or "")
    # Signed by a key this node does not trust, under a trusted key's id.
    other = tmp_path / "other"
    other.mkdir()
    forger = Signer.from_file(signing.generate("ops-1", other)[0])
    assert "bad signature" in (verifier.verify(forger.sign(body())) or "")


POLICY = [
    # keys?, allow_unsigned, mutating, signed?, expected fragment (None = may proceed)
    (False, False, True, False, "commands are disabled: no trusted keys"),
    (False, False, True, True, "commands are disabled: no trusted keys"),
    (False, False, False, False, None),  # status may be unsigned
    (False, True, True, False, None),  # the lab switch
    (True, False, True, False, "missing signature"),
    (True, False, True, True, None),
    (True, False, False, False, None),
    (True, True, True, False, None),
]


@pytest.mark.parametrize("case", POLICY)
def test_signature_policy(
    keys: tuple[Signer, Verifier, Path], case: tuple[bool, bool, bool, bool, str | None]
) -> None:
    with_keys, allow, mutating, signed, expected = case
    signer, verifier, _ = keys
    if not with_keys:
        verifier = Verifier({})
    request = signer.sign(body()) if signed else body()
    reason = verifier.authenticate(request, mutating=mutating, allow_unsigned=allow)
    assert reason == expected or (expected is not None and expected in (reason or ""))


def test_a_present_bad_signature_is_rejected_even_when_unsigned_is_allowed(
    keys: tuple[Signer, Verifier, Path],
) -> None:
    signer, verifier, _ = keys
    tampered = {**signer.sign(body()), "target": "pi-02"}
    reason = verifier.authenticate(tampered, mutating=False, allow_unsigned=True)
    assert reason is not None
    assert "bad signature" in reason


def test_keygen_modes_and_no_overwrite(tmp_path: Path) -> None:
    private, public = signing.generate("ops", tmp_path)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    before = private.read_bytes()
    with pytest.raises(SigningError, match="already exists"):
        signing.generate("ops", tmp_path)
    assert private.read_bytes() == before
    with pytest.raises(SigningError, match="key name"):
        signing.generate("../evil", tmp_path)


def test_trusted_key_problems_are_all_named(tmp_path: Path) -> None:
    _, public = signing.generate("ops", tmp_path)
    not_pem = tmp_path / "junk.pub"
    not_pem.write_text("hello")
    rsa_like = tmp_path / "priv.pub"
    rsa_like.write_bytes((tmp_path / "ops.key").read_bytes())
    with pytest.raises(SigningError) as caught:
        Verifier.from_files(
            [str(public), str(public), str(not_pem), str(tmp_path / "gone.pub"), str(rsa_like)]
        )
    text = str(caught.value)
    assert "listed twice" in text
    assert "junk.pub: not a PEM public key" in text
    assert "gone.pub: cannot read" in text
    assert "priv.pub: not a PEM public key" in text


def test_private_key_errors(tmp_path: Path) -> None:
    _, public = signing.generate("ops", tmp_path)
    with pytest.raises(SigningError, match="not an unencrypted PEM private key"):
        Signer.from_file(public)
    with pytest.raises(SigningError, match="cannot read"):
        Signer.from_file(tmp_path / "missing.key")


def test_trusted_keys_are_checked_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"commands\.trusted_keys: '/nonexistent/ops\.pub'"):
        config.load(None, {"EDGE_AGENT_COMMANDS_TRUSTED_KEYS": "/nonexistent/ops.pub"})
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key")
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'[commands]\ntrusted_keys = ["{junk}"]\n[state]\ndir = "{tmp_path}"\n'
        '[http]\nenabled = false\n[mqtt]\nport = 1\n[log]\nformat = "json"\n'
    )
    run = [sys.executable, "-m", "agent", "run", "--config", str(toml)]
    done = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3  # start-up failure, before any command could be accepted
    assert "junk.pub: not a PEM public key" in done.stdout + done.stderr


# --- key file formats: what cryptography and OpenSSL write loads, and the other way round ----


def test_keys_written_by_cryptography_load_and_interoperate(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    (tmp_path / "old.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "old.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    signed = Signer.from_file(tmp_path / "old.key").sign(body())
    assert Verifier.from_files([str(tmp_path / "old.pub")]).verify(signed) is None
    # The signature is the one cryptography makes (Ed25519 is deterministic) ...
    raw = base64.b64decode(signed["sig"])
    key.public_key().verify(raw, signing.signed_bytes(signed))
    assert raw == key.sign(signing.signed_bytes(signed))


def test_keygen_output_loads_in_cryptography(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    private, public = signing.generate("ops-1", tmp_path)
    loaded = serialization.load_pem_private_key(private.read_bytes(), password=None)
    loaded_public = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(loaded, Ed25519PrivateKey)
    assert isinstance(loaded_public, Ed25519PublicKey)
    signed = Signer.from_file(private).sign(body())
    loaded_public.verify(base64.b64decode(signed["sig"]), signing.signed_bytes(signed))


def test_keys_written_by_openssl_load(tmp_path: Path) -> None:
    private, public = tmp_path / "ossl.key", tmp_path / "ossl.pub"
    run = [["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)]]
    run.append(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)])
    for argv in run:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    signed = Signer.from_file(private).sign(body())
    assert Verifier.from_files([str(public)]).verify(signed) is None


def test_pkcs8_v2_with_public_key_loads(tmp_path: Path) -> None:
    seed = bytes(range(32))
    raw_public = Signer("v2", seed).public_key
    der = signing.PKCS8_V2_PREFIX + seed + signing.PKCS8_V2_PUBLIC + raw_public
    pem = (
        b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(der) + b"\n-----END PRIVATE KEY-----\n"
    )
    assert signing.private_key_seed(pem) == seed


@pytest.mark.parametrize(
    ("label", "der"),
    [
        ("ENCRYPTED PRIVATE KEY", signing.PKCS8_V1_PREFIX + bytes(32)),
        ("PRIVATE KEY", signing.PKCS8_V1_PREFIX + bytes(31)),
        ("PRIVATE KEY", bytes.fromhex("302e020100300506032b657104220420") + bytes(32)),  # X448 oid
    ],
)
def test_other_private_keys_are_refused(tmp_path: Path, label: str, der: bytes) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(
        f"-----BEGIN {label}-----\n".encode()
        + base64.b64encode(der)
        + f"\n-----END {label}-----\n".encode()
    )
    with pytest.raises(SigningError, match="not an unencrypted PEM private key"):
        Signer.from_file(path)
