"""Ed25519 manifest signatures: round trip, tampering, wrong/unknown keys, key files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from crux.ship.signing import (
    SignatureError,
    canonical_json,
    generate_private_key,
    init_keys,
    key_id,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    sign,
    verify,
)


def test_sign_verify_round_trip() -> None:
    key = generate_private_key()
    doc = {"version": 3, "files": {"model.onnx": {"sha256": "ab" * 32}}, "note": "é"}
    signed = sign(doc, key)
    assert signed["signature"]["key_id"] == key_id(key)
    assert verify(signed, [key.public_key()]) == doc


def test_canonical_json_is_key_order_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == canonical_json({"a": [1, {"c": 3, "d": 2}], "b": 1})


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.update(version=4),
        lambda d: d["files"]["model.onnx"].update(sha256="cd" * 32),
        lambda d: d.update(extra=True),
        lambda d: d.pop("signature"),
    ],
)
def test_tampered_document_is_rejected(tamper) -> None:  # type: ignore[no-untyped-def]
    key = generate_private_key()
    signed = sign({"version": 3, "files": {"model.onnx": {"sha256": "ab" * 32}}}, key)
    import copy

    bad = copy.deepcopy(signed)
    tamper(bad)
    with pytest.raises(SignatureError):
        verify(bad, [key.public_key()])


def test_wrong_and_unknown_keys_are_rejected() -> None:
    key, other = generate_private_key(), generate_private_key()
    signed = sign({"a": 1}, key)
    with pytest.raises(SignatureError, match="unknown key"):
        verify(signed, [other.public_key()])
    # Same key id, different key: a forged key id must still fail on the signature itself.
    forged = sign({"a": 1}, other)
    forged["signature"]["key_id"] = key_id(key)
    with pytest.raises(SignatureError, match="does not match"):
        verify(forged, [key.public_key()])
    with pytest.raises(SignatureError, match="no trusted"):
        verify(signed, [])
    # Rotation: any trusted key is accepted.
    assert verify(signed, [other.public_key(), key.public_key()]) == {"a": 1}


def test_init_keys_writes_private_key_0600_and_refuses_overwrite(tmp_path: Path) -> None:
    priv, pub = tmp_path / "keys" / "publish.key", tmp_path / "keys" / "publish.pub"
    kid = init_keys(priv, pub)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    private = load_private_key(priv.read_bytes())
    public = load_public_key(pub.read_text())
    assert key_id(private) == key_id(public) == kid
    with pytest.raises(FileExistsError):
        init_keys(priv, pub)
    assert init_keys(priv, pub, overwrite=True) != kid


def test_pem_round_trip_and_bad_pem() -> None:
    key = generate_private_key()
    assert key_id(load_private_key(private_key_pem(key))) == key_id(key)
    assert key_id(load_public_key(public_key_pem(key.public_key()))) == key_id(key)
    with pytest.raises(SignatureError):
        load_private_key(b"not a key")
    with pytest.raises(SignatureError):
        load_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
