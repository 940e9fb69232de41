"""The flagship promise with real DNS software under a real load client, on
both backends: dnsmasq serves (authoritatively, or as a forwarding resolver
with an upstream in a namespace of its own) behind the flagship policies
applied by `nfc apply`, and dnsperf and dig ask it, from client namespaces
and from the server itself.

The figures asserted are dnsperf's own report (queries sent, completed,
lost, response codes) and the server namespace's nf_conntrack_count. The
load is a few seconds at a rate this two-core machine sustains; a stated
loss is allowed for its scheduling, never for the firewall's."""

from __future__ import annotations

from pathlib import Path

import pytest
from dns_software import (
    BIG,
    BIG_TXT,
    EDNS_MAX,
    HUGE,
    HUGE_TXT,
    MISSING,
    WWW,
    WWW4,
    WWW6,
    PerfReport,
    authoritative,
    collect_report,
    dig,
    dnsperf,
    dnsperf_command,
    require_dns_software,
    resolver,
    start_dnsmasq,
    udp_datagrams_received,
)

from nfc.backends import BACKENDS

from conftest import CONTROL, ROOT
from lab import CLIENT_A4, CLIENT_B4, SERVER_A4, SERVER_A6, SERVER_B4, Lab, Namespace

pytestmark = pytest.mark.netns

AUTHORITATIVE = ROOT / "policies" / "dns-authoritative.yaml"
RECURSIVE = ROOT / "policies" / "dns-recursive.yaml"
# dns-authoritative.yaml without its notrack entry (CONTROL is the same for dns-recursive.yaml)
CONTROL_AUTHORITATIVE = ROOT / "tests" / "policies" / "control-dns-authoritative-stateful.yaml"
UPSTREAM_LINK = (("10.77.3.1", "fd00:77:3::1"), ("10.77.3.2", "fd00:77:3::2"))  # (server, upstream)

SECONDS = 2
RATE = 1000  # queries a second that dnsmasq answers here with room to spare
CLIENTS = 200  # dnsperf's sockets: one source port, one conntrack entry each when tracked
LOSS = 0.01  # of queries sent, for a busy machine's scheduling
NEAR_ZERO = 5  # conntrack entries a notrack server may still hold (none are expected)


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    require_dns_software()
    return request.param


def applied(lab: Lab, policy: Path, backend: str) -> None:
    result = lab.apply(policy, backend=backend)
    assert result.returncode == 0, result.stderr


def assert_served(report: PerfReport) -> None:
    """~All queries answered, and as the zone says: the names alternate, so
    half NOERROR (www) and half NXDOMAIN (nope), and nothing else."""
    assert report.completed >= (1 - LOSS) * report.sent, report
    assert set(report.rcodes) == {"NOERROR", "NXDOMAIN"}, report
    for count in report.rcodes.values():
        assert count >= (0.5 - LOSS) * report.sent, report


def tcp_entries(ns: Namespace) -> list[str]:
    """The server's conntrack entries of TCP DNS."""
    result = ns.run("conntrack", "-L", "-p", "tcp", "--dport", "53")
    return [line for line in result.stdout.splitlines() if "dport=53" in line]


def test_authoritative_server_under_load_keeps_conntrack_empty(lab: Lab, backend: str) -> None:
    applied(lab, AUTHORITATIVE, backend)
    start_dnsmasq(lab, lab.server, authoritative(["eth-a", "eth-b"]), probe=SERVER_A4)
    untracked = dnsperf(lab, lab.client_a, SERVER_A4, seconds=SECONDS, rate=RATE, clients=CLIENTS)
    assert_served(untracked)
    assert lab.server.conntrack_count() <= NEAR_ZERO, untracked

    # The same load without notrack: one entry per dnsperf socket (its
    # source port), which lives for udp_timeout_stream after the load.
    applied(lab, CONTROL_AUTHORITATIVE, backend)
    tracked = dnsperf(lab, lab.client_a, SERVER_A4, seconds=SECONDS, rate=RATE, clients=CLIENTS)
    assert_served(tracked)
    assert lab.server.conntrack_count() >= CLIENTS, tracked


def test_authoritative_server_answers_over_tcp_and_after_truncation(lab: Lab, backend: str) -> None:
    applied(lab, AUTHORITATIVE, backend)
    start_dnsmasq(lab, lab.server, authoritative(["eth-a", "eth-b"]), probe=SERVER_A4)
    # dig, not `dnsperf -m tcp`: dnsperf reconnects after each of dnsmasq's
    # TCP answers and loses the queries it had pipelined on the old
    # connection (half of them at 50 a second, with no firewall at all).
    assert dig(lab.client_a, SERVER_A4, "+tcp", "+short", WWW).stdout.split() == [WWW4]
    assert "status: NXDOMAIN" in dig(lab.client_a, SERVER_A4, "+tcp", MISSING).stdout
    assert dig(lab.client_a, SERVER_A6, "+short", WWW, "AAAA").stdout.split() == [WWW6]
    # TCP DNS is tracked: its connections are in the table, accepted as established
    assert tcp_entries(lab.server)
    # Without EDNS the answer does not fit 512 bytes: TC over (untracked) UDP,
    # then the whole answer over (tracked) TCP.
    big = dig(lab.client_a, SERVER_A4, "+noedns", BIG, "TXT").stdout
    assert "Truncated, retrying in TCP mode" in big, big
    assert big.count("x" * 200) == len(BIG_TXT), big


def test_abusive_source_is_throttled_while_a_polite_one_is_answered(lab: Lab, backend: str) -> None:
    applied(lab, RECURSIVE, backend)
    start_dnsmasq(lab, lab.server, authoritative(["eth-a", "eth-b"]), probe=SERVER_A4)
    # dns-recursive.yaml's meter: 10/second, burst 20, per source address
    polite = lab.client_b.popen(*dnsperf_command(lab, SERVER_B4, seconds=SECONDS, rate=5, source=CLIENT_B4))
    # up to a second of the flood outstanding, so that losses do not slow it down
    flood = dnsperf(
        lab, lab.client_a, SERVER_A4, seconds=SECONDS, rate=RATE, source=CLIENT_A4, outstanding=2 * RATE
    )
    calm = collect_report(polite)
    assert flood.sent >= SECONDS * RATE / 2, flood
    # burst 20, then 10 a second while the flood lasts (and its last second of waiting)
    assert 20 <= flood.completed <= 20 + 10 * (SECONDS + 1) + 2, flood
    assert calm.sent >= 5 and calm.completed == calm.sent, calm
    assert_served(calm)


def test_resolver_forwards_through_the_untracked_answer_path(lab: Lab, backend: str) -> None:
    (server_link, upstream_link) = UPSTREAM_LINK
    upstream = lab.attach("u", "eth-u", server_link, upstream_link)
    start_dnsmasq(lab, upstream, authoritative(["eth0"]), probe=upstream_link[0])
    applied(lab, RECURSIVE, backend)
    start_dnsmasq(lab, lab.server, resolver(upstream_link[0], ["lo", "eth-a", "eth-b"]), probe="127.0.0.1")

    # a client within the meter's rate, over both families
    client = dnsperf(lab, lab.client_a, SERVER_A4, seconds=1, rate=10, source=CLIENT_A4)
    assert client.completed == client.sent, client
    assert_served(client)
    assert dig(lab.client_a, SERVER_A6, "+short", WWW, "AAAA").stdout.split() == [WWW6]
    # An answer in IP fragments, over UDP on both hops (dnsmasq asks
    # upstream over TCP only after a truncated answer, and TCP would be
    # tracked): the untracked answer from upstream is reassembled first.
    huge = dig(lab.client_a, SERVER_A4, f"+bufsize={EDNS_MAX}", HUGE, "TXT").stdout
    assert huge.count(HUGE_TXT[0]) == len(HUGE_TXT), huge
    assert "Truncated" not in huge and not tcp_entries(lab.server), huge
    big = dig(lab.client_a, SERVER_A4, "+noedns", BIG, "TXT").stdout
    assert big.count("x" * 200) == len(BIG_TXT), big

    # the resolver's host asks itself over loopback, at load: every query is
    # one more query upstream (no cache) whose answer comes back untracked
    assert dig(lab.server, "::1", "+short", WWW).stdout.split() == [WWW4]
    before = udp_datagrams_received(upstream)
    itself = dnsperf(lab, lab.server, "127.0.0.1", seconds=SECONDS, rate=RATE, clients=CLIENTS)
    asked = udp_datagrams_received(upstream) - before
    assert_served(itself)
    # dnsmasq merges identical questions in flight, so upstream gets fewer
    # queries than the resolver answers; how many depends on the machine's load
    assert asked >= itself.completed / 10, (asked, itself)
    assert lab.server.conntrack_count() <= NEAR_ZERO, (asked, itself)

    # The stateful control: each upstream query, from a random port of its
    # own, is an entry (a port that repeats within the timeout is one entry
    # for two queries), beside one per dnsperf socket.
    applied(lab, CONTROL, backend)
    before = udp_datagrams_received(upstream)
    tracked = dnsperf(lab, lab.server, "127.0.0.1", seconds=SECONDS, rate=RATE, clients=CLIENTS)
    asked = udp_datagrams_received(upstream) - before
    assert_served(tracked)
    assert lab.server.conntrack_count() >= 0.9 * asked + CLIENTS, (asked, tracked)
