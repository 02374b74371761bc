from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from conceptvault.errors import ConceptVaultError
from conceptvault.key import Key
from conceptvault.keyfile import key_fingerprint, read_key_file, write_key_file

VAULT_PRINT = "a" * 64


@pytest.fixture
def key() -> Key:
    g = torch.Generator().manual_seed(0)
    made = Key(3, 8, init=torch.randn(3, 8, generator=g))
    with torch.no_grad():
        made.p_v.add_(1.0)
    return made


def same(a: Key, b: Key) -> bool:
    return torch.equal(a.p_k, b.p_k) and torch.equal(a.p_v, b.p_v)


def test_plain_round_trip(tmp_path, key):
    path = tmp_path / "star.safetensors"
    write_key_file(path, key, concept="star", public_fingerprint=VAULT_PRINT)
    concept, loaded = read_key_file(path, public_fingerprint=VAULT_PRINT)
    assert concept == "star" and same(loaded, key)


def test_protected_round_trip_hides_the_tensors(tmp_path, key):
    path = tmp_path / "star.key"
    write_key_file(path, key, concept="star", public_fingerprint=VAULT_PRINT, passphrase="open sesame")
    raw = path.read_bytes()
    assert key.p_k.detach().numpy().tobytes()[:16] not in raw
    concept, loaded = read_key_file(path, public_fingerprint=VAULT_PRINT, passphrase="open sesame")
    assert concept == "star" and same(loaded, key)


def test_a_key_with_projection_changes_round_trips(tmp_path):
    layers = {"mid_block.attn2.processor": {"q": (6, 6), "k": (6, 8), "v": (6, 8), "out": (6, 6)}}
    ranked = Key(3, 8, init=torch.randn(3, 8), layers=layers, rank=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ranked.changes["mid_block__attn2__processor"].v_up.add_(1.0)
    for path, passphrase in ((tmp_path / "star.safetensors", None), (tmp_path / "star.key", "open sesame")):
        write_key_file(path, ranked, concept="star", public_fingerprint=VAULT_PRINT, passphrase=passphrase)
        _, loaded = read_key_file(path, public_fingerprint=VAULT_PRINT, passphrase=passphrase)
        assert loaded.rank == 2 and key_fingerprint(loaded) == key_fingerprint(ranked)
    assert key_fingerprint(ranked) != key_fingerprint(Key(3, 8, init=ranked.p_k))


def test_wrong_passphrase_and_tampering_are_one_line_errors(tmp_path, key):
    path = tmp_path / "star.key"
    write_key_file(path, key, concept="star", public_fingerprint=VAULT_PRINT, passphrase="open sesame")
    with pytest.raises(ConceptVaultError, match="passphrase is wrong or the file was changed") as error:
        read_key_file(path, public_fingerprint=VAULT_PRINT, passphrase="open sesame!")
    assert "\n" not in str(error.value)
    with pytest.raises(ConceptVaultError, match="protected by a passphrase; give its `passphrase`"):
        read_key_file(path, public_fingerprint=VAULT_PRINT)

    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit of the ciphertext
    with pytest.raises(ConceptVaultError, match="passphrase is wrong or the file was changed"):
        read_key_file(path, public_fingerprint=VAULT_PRINT, passphrase="open sesame")
    path.write_bytes(original.replace(b'"concept": "star"', b'"concept": "stay"'))  # the authenticated header
    with pytest.raises(ConceptVaultError, match="passphrase is wrong or the file was changed"):
        read_key_file(path, public_fingerprint=VAULT_PRINT, passphrase="open sesame")
    path.write_bytes(original[:10])
    with pytest.raises(ConceptVaultError, match="damaged"):
        read_key_file(path, public_fingerprint=VAULT_PRINT, passphrase="open sesame")


def test_protected_header_records_the_kdf(tmp_path, key):
    path = tmp_path / "star.key"
    write_key_file(path, key, concept="star", public_fingerprint=VAULT_PRINT, passphrase="pw")
    raw = path.read_bytes()
    start = raw.index(b"{")
    (length,) = struct.unpack(">I", raw[start - 4 : start])
    header = json.loads(raw[start : start + length])
    assert (header["kdf"], header["n"], header["r"], header["p"]) == ("scrypt", 2**15, 8, 1)
    assert header["cipher"] == "AES-256-GCM" and header["public_fingerprint"] == VAULT_PRINT


@pytest.mark.parametrize("passphrase", [None, "pw"])
def test_a_key_file_refuses_another_vault(tmp_path, key, passphrase):
    path = tmp_path / ("star.safetensors" if passphrase is None else "star.key")
    write_key_file(path, key, concept="star", public_fingerprint=VAULT_PRINT, passphrase=passphrase)
    with pytest.raises(
        ConceptVaultError, match=r"belongs to another vault \(fingerprint aaaaaaaaaaaa\), not this one"
    ):
        read_key_file(path, public_fingerprint="b" * 64, passphrase=passphrase)


def test_damaged_plain_files(tmp_path, key):
    path = tmp_path / "star.safetensors"
    write_key_file(path, key, concept="star", public_fingerprint=VAULT_PRINT)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ConceptVaultError, match="cannot be read"):
        read_key_file(path, public_fingerprint=VAULT_PRINT)
    info = {
        "format": "conceptvault-key",
        "concept": "star",
        "public_fingerprint": VAULT_PRINT,
        "key_fingerprint": key_fingerprint(key),
    }
    save_file({"p_k": key.p_k.detach() + 1, "p_v": key.p_v.detach()}, str(path), metadata=info)
    with pytest.raises(ConceptVaultError, match="do not match its fingerprint"):
        read_key_file(path, public_fingerprint=VAULT_PRINT)
