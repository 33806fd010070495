"""Link emulation's arithmetic (#22): bandwidth parsing, a link's timing, the `--max-staleness auto` rule and the
link it measures. The jobs across namespaces and the reliability tests are in test_hosts.py; the run with an
emulated delay that computes what the run without one computes is in test_parallel.py."""

from __future__ import annotations

import json

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


def test_derive_staleness_adds_the_measured_link():
    """[Note: measured link]: the real network's delay and transfer add to the emulated link's."""
    # T = 10 ms; measured 1 ms + 9 ms one way, emulated 10 ms: round trip 2 (11 + 9) = 40 ms = 4 steps -> 1 + 4 + 1
    d = derive_staleness(0.01, LinkSpec(delay_s=0.01), 4096, measured=(0.001, 0.009))
    assert d["staleness"] == 6
    assert d["round_trip_ms"] == pytest.approx(40.0)
    assert d["transfer_ms"] == pytest.approx(9.0)
    assert d["measured_link"] == {"delay_ms": 1.0, "transfer_ms": 9.0, "negligible": False}
    # a 100 Mbit/s link carrying 1 MiB (88 ms) under a 70 ms step: S = 1 + ceil(176 / 70) + 1 = 5, bandwidth-bound
    d = derive_staleness(0.07, LinkSpec(), 2**20, measured=(0.0001, 0.088))
    assert d["staleness"] == 5 and d["bandwidth_bound"]


def test_a_measured_round_trip_under_a_tenth_of_a_step_counts_as_none():
    # loopback: 0.05 ms + 0.4 ms one way under a 65 ms step: the default S = 2, as without measuring
    d = derive_staleness(0.065, LinkSpec(), 2**20, measured=(0.00005, 0.0004))
    assert d["staleness"] == 2 and d["round_trip_ms"] == 0.0
    assert d["measured_link"]["negligible"]
    # just over a tenth of a step: it counts
    assert derive_staleness(0.065, LinkSpec(), 2**20, measured=(0.0, 0.0033))["staleness"] == 3


_MEASURE = """
import json, os, sys
from synthgrad.parallel.link import EmulatedLinks, LinkSpec
from synthgrad.parallel.runtime import Runtime
from synthgrad.parallel.staleness import measure_link
rt = Runtime.from_env("cpu", timeout_s=60)
rt.link = EmulatedLinks(LinkSpec(0.03, 8e6))  # stands in for a real 30 ms, 8 Mbit/s network
d, x = measure_link(rt, 20_000)
print(json.dumps([d, x, rt.timing.wait_s]))
rt.close()
"""


def test_measure_link_finds_a_links_delay_and_transfer_time(tmp_path):
    """Two processes on loopback whose messages all go through an emulated 30 ms, 8 Mbit/s link: measure_link
    reports about 30 ms one way and 20 ms for a 20 kB message (20_000 · 8 / 8e6), on both ranks."""
    import os
    import socket
    import subprocess
    import sys

    from synthgrad.parallel.netns import repo_env

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**repo_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [subprocess.Popen([sys.executable, "-c", _MEASURE], env={**env, "RANK": str(r)}, stdout=-1, stderr=-1,
                              text=True, cwd=os.getcwd()) for r in (0, 1)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert results[0][:2] == results[1][:2]  # the ranks agree
    d, x, waited = results[0]
    assert d == pytest.approx(0.030, abs=0.006)
    assert x == pytest.approx(0.020, abs=0.006)
    assert waited == 0.0  # the probe's waiting is not the stage's
