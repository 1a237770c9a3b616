"""An anchor's two encodings and its MAC."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from callrec.anchoring import Anchor
from callrec.crypto.auditkeys import AuditKeys

KEYS = AuditKeys({1: b"a" * 32, 2: b"b" * 32})


def make(seq: int = 1234) -> Anchor:
    return Anchor.make(
        KEYS, at=datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC), seq=seq, head_mac=b"\x07" * 32
    )


def test_both_encodings_give_back_the_same_authentic_anchor() -> None:
    anchor = make()
    assert anchor.key_id == 2  # the newest key signs
    assert Anchor.from_json(anchor.to_json()) == anchor
    assert Anchor.from_name(anchor.name) == anchor
    assert anchor.name.startswith("0000000000001234-20261123T100000.123456Z-k2-0707")
    assert anchor.authentic(KEYS)


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 1235},
        {"at": datetime(2026, 11, 23, 10, 0, 1, tzinfo=UTC)},
        {"head_mac": b"\x08" * 32},
        {"key_id": 1},
    ],
)
def test_any_changed_field_fails_the_mac(change: dict[str, object]) -> None:
    assert not replace(make(), **change).authentic(KEYS)  # type: ignore[arg-type]


def test_an_anchor_mac_is_not_an_entry_mac() -> None:
    anchor = make()
    canonical = Anchor.canonical(at=anchor.at, seq=anchor.seq, head_mac=anchor.head_mac, key_id=2)
    assert KEYS.entry_mac(2, b"\x00" * 32, canonical) != anchor.mac
    assert KEYS.checkpoint_mac(2, canonical) != anchor.mac


@pytest.mark.parametrize(
    "name",
    [
        "",
        "README.txt",
        make().name.replace(".json", ".txt"),
        make().name[1:],
        make().name.replace("-k2-", "-k0-"),
        make().name.replace("0707", "07zz", 1),
    ],
)
def test_what_is_not_an_anchor_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        Anchor.from_name(name)


@pytest.mark.parametrize(
    "line",
    ["", "null", "[]", '{"v": 2}', '{"v": 1, "at": "x"}', make().to_json().replace('"seq":1234', '"seq":-1')],
)
def test_what_is_not_an_anchor_line_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        Anchor.from_json(line)
