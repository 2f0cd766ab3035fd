"""Ed25519 signatures for published model manifests and rollback records (`cryptography` only; edge-safe).

A signed document is a JSON object with a `signature` member: {"alg": "ed25519", "key_id": …, "value": base64}.
The signature covers the canonical JSON (sorted keys, no spaces, UTF-8) of the object without `signature`, so any
change to any other member — a file hash, a version, a rollback target — breaks it. `key_id` (first 16 hex chars
of the SHA-256 of the raw public key) lets an edge box trust several keys during a key rotation.

Private keys are PEM (PKCS#8, unencrypted) files outside git, created 0600 by `init_keys`, or PEM text from an
environment variable the CLI reads; library code never reads the environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crux.errors import CruxError

ALG = "ed25519"
SIGNATURE_KEY = "signature"


class KeyFileError(CruxError, FileExistsError):
    """A key file is in the way (or cannot be written); the message names it and the way out."""


class SignatureError(CruxError, ValueError):
    """A document is unsigned, signed by an unknown key, or its signature does not match its content."""


def canonical_json(data: Any) -> bytes:
    """The exact bytes that are signed: the same on every machine and Python version."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(pem: bytes | str) -> Ed25519PrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_public_key(pem: bytes | str) -> Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def load_public_keys(paths: Iterable[Path]) -> list[Ed25519PublicKey]:
    return [load_public_key(Path(p).read_bytes()) for p in paths]


def init_keys(private_path: Path, public_path: Path, overwrite: bool = False) -> str:
    """Create a key pair: private key file mode 0600 (created that way, never world-readable for a moment).

    Returns the key id. Refuses to replace an existing private key unless `overwrite` (edge boxes trusting the
    old public key would reject every later model).
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists() and not overwrite:
        raise KeyFileError(
            f"{private_path} exists: a signing key is already set up (`crux keys rotate` makes a new one and keeps "
            "the old public key trusted; --overwrite replaces it, and edges must get the new public key)"
        )
    for path in (private_path, public_path):
        if path.exists() and not path.is_file():
            raise KeyFileError(f"{path} is not a file")
    key = generate_private_key()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(private_path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_key_pem(key))
    os.chmod(private_path, 0o600)  # O_CREAT's mode does not apply to an existing file
    public_path.write_bytes(public_key_pem(key.public_key()))
    return key_id(key)


def _unsigned(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != SIGNATURE_KEY}


def sign(document: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of `document` with its signature (any previous signature is replaced)."""
    body = _unsigned(document)
    value = key.sign(canonical_json(body))
    return {**body, SIGNATURE_KEY: {"alg": ALG, "key_id": key_id(key), "value": base64.b64encode(value).decode()}}


def verify(document: Mapping[str, Any], keys: Iterable[Ed25519PublicKey]) -> dict[str, Any]:
    """The document without its signature when one of `keys` signed exactly this content; else SignatureError."""
    sig = document.get(SIGNATURE_KEY)
    if not isinstance(sig, Mapping) or sig.get("alg") != ALG or not isinstance(sig.get("value"), str):
        raise SignatureError("document is not signed (no ed25519 signature)")
    trusted = {key_id(k): k for k in keys}
    if not trusted:
        raise SignatureError("no trusted public key configured")
    key = trusted.get(str(sig.get("key_id")))
    if key is None:
        raise SignatureError(f"signed by unknown key {sig.get('key_id')!r}; trusted: {', '.join(sorted(trusted))}")
    body = _unsigned(document)
    try:
        key.verify(base64.b64decode(sig["value"], validate=True), canonical_json(body))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not match the document (tampered or wrong key)") from exc
    return body


def rotate_keys(private_path: Path, public_path: Path) -> tuple[str, str, Path, Path]:
    """Replace the signing key pair, keeping the old public key trusted for the overlap.

    The old public key is kept as `publish-<old id>.pub` beside `public_path` (list it in `edge.public_keys` until
    every edge has the new key and production is signed by it); the old private key is moved to
    `<private>.retired-<old id>` (0600) instead of being destroyed, so nothing is lost by a mistaken rotation —
    delete it once the overlap ends. Returns (old id, new id, old public key file, retired private key file).
    """
    private_path, public_path = Path(private_path), Path(public_path)
    if not private_path.is_file():
        raise SignatureError(f"{private_path}: no signing key to rotate (run `crux keys init`)")
    old = load_private_key(private_path.read_bytes())
    old_id = key_id(old)
    old_public = public_path.with_name(f"{public_path.stem}-{old_id}{public_path.suffix or '.pub'}")
    retired = private_path.with_name(f"{private_path.name}.retired-{old_id}")
    old_public.write_bytes(public_key_pem(old.public_key()))
    fd = os.open(retired, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_key_pem(old))
    os.chmod(retired, 0o600)
    new_id = init_keys(private_path, public_path, overwrite=True)
    return old_id, new_id, old_public, retired
