"""The signer reproduces MMOLove's published test vectors byte for byte."""

import pytest

from relay import signing

pytestmark = pytest.mark.unit

VECTORS = [
    (
        "test-secret",
        1733500000,
        '{"event":"registered","token":"mmref-example","server_id":"srv-123",'
        '"referee_identity":"player-7842","server_event_id":"reg-7842","ts":1733500000}',
        "76f4476ad1ae41017a35589c9b7dc202690993c6a8224b12d990773ec3b3b56a",
    ),
    (
        "test-secret",
        1733500600,
        '{"event":"qualified","token":"mmref-example","server_id":"srv-123",'
        '"server_event_id":"qual-7842","ts":1733500600}',
        "012641e43a205345fcb73964833db4af8c363b1800eec5e4bb7f65bfe1dd2c49",
    ),
    (
        "s3cr3t-ü",
        1733500000,
        '{"event":"registered","token":"mmref-ü","server_id":"srv-123",'
        '"referee_identity":"Zoë","server_event_id":"reg-zoë","ts":1733500000}',
        "7ca11ccdc77699b3c3f5768377bfc028621c4ea2a45c51037161d990327b99a8",
    ),
]


@pytest.mark.parametrize(("secret", "t", "body", "expected"), VECTORS)
def test_mac_matches_published_vector(secret: str, t: int, body: str, expected: str) -> None:
    assert signing.mac(body.encode("utf-8"), secret, t) == expected


def test_header_carries_t_mac_and_optional_kid() -> None:
    secret, t, body, expected = VECTORS[0]
    assert signing.signature_header(body.encode(), secret, t) == f"t={t},v1=sha256={expected}"
    with_kid = signing.signature_header(body.encode(), secret, t, kid="k2")
    assert with_kid == f"t={t},v1=sha256={expected},kid=k2"


def test_parse_and_verify_round_trip() -> None:
    secret, t, body, _ = VECTORS[2]
    header = signing.signature_header(body.encode(), secret, t, kid="rot-1")
    parsed = signing.parse_header(header)
    assert (parsed.t, parsed.kid) == (t, "rot-1")
    assert signing.verify(body.encode(), secret, parsed)
    assert not signing.verify(body.encode() + b"\n", secret, parsed)
    assert not signing.verify(body.encode(), "other-secret", parsed)


@pytest.mark.parametrize("bad", ["", "t=abc,v1=sha256=00", "t=1", "t=1,v1=md5=00", "garbage"])
def test_parse_rejects_malformed_headers(bad: str) -> None:
    with pytest.raises(ValueError, match="signature header"):
        signing.parse_header(bad)
