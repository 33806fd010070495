"""Link emulation's arithmetic (#22): bandwidth parsing, a link's timing, and the `--max-staleness auto` rule.

Still missing here (see the helper's report): the bit-identical decoupled run with --link-delay-ms 20, the netns
job, and the reliability tests."""

from __future__ import annotations

import pytest

from synthgrad.parallel.link import LinkSpec, format_bandwidth, parse_bandwidth
from synthgrad.parallel.staleness import derive_staleness


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("1gbit", 1e9),
        ("100mbit", 1e8),
        ("250kbit", 2.5e5),
        ("1e9", 1e9),
        ("12.5mbps", 1e8),
        (" 100 MBit ", 1e8),
        ("unlimited", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_bandwidth(text, bits):
    assert parse_bandwidth(text) == bits


@pytest.mark.parametrize("text", ["fast", "10 parsecs", "0mbit", "-5mbit", "1gbyte"])
def test_parse_bandwidth_refuses(text):
    with pytest.raises(ValueError):
        parse_bandwidth(text)


def test_format_bandwidth_round_trips():
    for text in ("1gbit", "100mbit", "250kbit"):
        assert format_bandwidth(parse_bandwidth(text)) == text
    assert format_bandwidth(None) == "unlimited"


def test_link_timing():
    link = LinkSpec(delay_s=0.02, bandwidth_bps=1e8)
    assert link.active
    assert link.transfer_s(1_250_000) == pytest.approx(0.1)  # 10 Mbit over 100 Mbit/s
    assert link.arrival_s(1_250_000) == pytest.approx(0.12)
    assert not LinkSpec().active
    assert LinkSpec().arrival_s(10**9) == 0.0


def test_derive_staleness_no_delay_gives_default():
    d = derive_staleness(0.01, LinkSpec(), 4096)
    assert d["staleness"] == 2  # 1 + 0 + margin 1
    assert d["round_trip_ms"] == 0.0
    assert not d["bandwidth_bound"]


def test_derive_staleness_hand_computed():
    # T = 10 ms, d = 20 ms, unlimited: round trip 40 ms = 4 steps -> S = 1 + 4 + 1 = 6
    assert derive_staleness(0.01, LinkSpec(delay_s=0.02), 4096)["staleness"] == 6
    # T = 3 ms, d = 5 ms: 10 ms / 3 ms = 3.33 -> ceil 4 -> S = 6; margin 0 -> 5
    assert derive_staleness(0.003, LinkSpec(delay_s=0.005), 0)["staleness"] == 6
    assert derive_staleness(0.003, LinkSpec(delay_s=0.005), 0, margin=0)["staleness"] == 5
    # T = 10 ms, d = 20 ms, 100 Mbit/s, 125 kB message: x = 10 ms, round trip 60 ms = 6 steps -> S = 8
    d = derive_staleness(0.01, LinkSpec(delay_s=0.02, bandwidth_bps=1e8), 125_000)
    assert d["transfer_ms"] == pytest.approx(10.0)
    assert d["round_trip_ms"] == pytest.approx(60.0)
    assert d["staleness"] == 8
    assert not d["bandwidth_bound"]  # x == T: still hideable


def test_derive_staleness_flags_bandwidth_bound():
    d = derive_staleness(0.001, LinkSpec(bandwidth_bps=1e8), 125_000)  # x = 10 ms > T = 1 ms
    assert d["bandwidth_bound"]
