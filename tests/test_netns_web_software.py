"""The flagship web and router policies with real web software under real
load clients, on both backends: nginx serves behind policies/web-notrack.yaml
and behind policies/router.yaml (masquerade and port forward), each policy
as shipped and loaded by `nfc apply`, and wrk (keep-alive connections) and
ab (a connection per request, or keep-alive) load it from client namespaces.

The figures asserted are the load clients' own reports (requests, non-2xx
responses, socket errors), nginx's log of every request (the peer it saw,
the port, the status) and the conntrack tables. wrk runs two seconds; ab a
few hundred requests. Nothing here is timed."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from web_software import (
    CLOSED,
    FORWARDED,
    LAN4,
    ROUTER,
    ROUTER_WAN4,
    UNFORWARDED,
    WAN4,
    WEB,
    WEB_PORTS,
    LoadReport,
    Nginx,
    WebRouter,
    ab,
    ab_command,
    collect,
    conntrack_entries,
    parse_ab,
    parse_wrk,
    require_web_software,
    serve_web,
    stateful_control,
    wrk,
    wrk_command,
)

from nfc.backends import BACKENDS

from lab import (
    CLIENT_A4,
    CLIENT_A6,
    CLIENT_B4,
    SERVER_A4,
    SERVER_A6,
    SERVER_B4,
    TRAFFIC,
    Lab,
    Namespace,
    _batch,
    _ip,
    require_lab,
    wait_until,
)

pytestmark = pytest.mark.netns

SHORT = 500  # ab's requests, each on a connection of its own
CONNECTIONS = 20  # wrk's keep-alive connections
# wrk first tries a connection to the address it resolved (wrk.resolve), then opens its own
WRK_CONNECTIONS = CONNECTIONS + 1
# ab keeps CONCURRENCY connections going and may open up to that many more
# than its requests, closed unused when the last answers come in
CONCURRENCY = 10
# The server closes first, so ab's side keeps no TIME_WAIT and may pick a source
# port again: conntrack then reopens that connection's TIME_WAIT entry, one
# entry for two connections (seen once in hundreds of runs: 520 of 521).
PORT_REUSE = 5
AB_CONNECTIONS = (SHORT - PORT_REUSE, SHORT + CONCURRENCY)
NEAR_ZERO = 5  # conntrack entries an untracked server may still hold (none are expected)


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    require_web_software()
    return request.param


def assert_all_served(*reports: LoadReport) -> None:
    for report in reports:
        assert report.requests > 0 and report.non_2xx == 0 and report.socket_errors == 0, report


def probe(ns: Namespace, *probes: tuple[str, int, str], timeout: float = 1.5) -> list[str]:
    """What became of a TCP connection to each (server, port, source), all
    tried at once: accept, reject (refused) or drop (no answer in time). An
    answer expected is awaited longer, so that a busy machine's slow answer
    is not taken for a drop."""
    items = [{"proto": "tcp", "server": s, "port": p, "source": src} for s, p, src in probes]
    wait = ("--timeout", str(timeout), "--patience", "20")
    result = ns.run(sys.executable, TRAFFIC, "probe", json.dumps(items), *wait, timeout=60)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_nginx_behind_the_web_policy_serves_every_request_untracked(
    lab: Lab, backend: str, tmp_path: Path
) -> None:
    """nginx behind web-notrack.yaml: keep-alive and short connections, over
    both families, all served and none in the conntrack table; a port the
    policy does not open silent; and, as the control, the same rules
    without notrack holding an entry per connection."""
    applied = lab.apply(WEB, backend=backend)
    assert applied.returncode == 0, applied.stderr
    nginx = serve_web(lab, tmp_path / "nginx")
    (web, short_web, web6) = WEB_PORTS

    keep_alive = wrk(lab.client_a, SERVER_A4, web, connections=CONNECTIONS)
    short = ab(lab.client_a, SERVER_A4, short_web, requests=SHORT, concurrency=CONCURRENCY)
    over_ipv6 = ab(lab.client_a, SERVER_A6, web6, requests=SHORT, concurrency=CONCURRENCY, keep_alive=True)
    assert_all_served(keep_alive, short, over_ipv6)
    assert short.requests == over_ipv6.requests == SHORT, (short, over_ipv6)
    # nginx answered every request the clients counted (and those wrk had
    # in flight when its time was up), all 200, all to the client's address
    assert set(nginx.statuses()) == {"200"}, nginx.statuses()
    assert set(nginx.peers(web)) == {CLIENT_A4} and nginx.peers(web)[CLIENT_A4] >= keep_alive.requests
    assert nginx.peers(short_web) == {CLIENT_A4: SHORT} and nginx.peers(web6) == {CLIENT_A6: SHORT}
    # the web ports bypass conntrack both ways: all those connections, no entry
    assert lab.server.conntrack_count() <= NEAR_ZERO, conntrack_entries(lab.server)

    # nginx listens on CLOSED too, but the policy drops it: no answer, not even a reset
    verdicts = probe(lab.client_a, (SERVER_A4, CLOSED, CLIENT_A4), (SERVER_A4, web, CLIENT_A4))
    assert verdicts == ["drop", "accept"]
    assert nginx.peers(CLOSED) == {}

    # The same rules without notrack: the same load is served, and every
    # connection is an entry (in TIME_WAIT after the load): wrk's few
    # keep-alive connections carried all its requests, ab's one each.
    applied = lab.apply(stateful_control(tmp_path), backend=backend)
    assert applied.returncode == 0, applied.stderr
    tracked_keep_alive = wrk(lab.client_a, SERVER_A4, web, connections=CONNECTIONS)
    tracked_short = ab(lab.client_a, SERVER_A4, short_web, requests=SHORT, concurrency=CONCURRENCY)
    assert_all_served(tracked_keep_alive, tracked_short)
    assert tracked_keep_alive.requests > 10 * CONNECTIONS, tracked_keep_alive
    assert len(conntrack_entries(lab.server, "--dport", str(web))) == WRK_CONNECTIONS
    entries = conntrack_entries(lab.server, "--dport", str(short_web))
    assert AB_CONNECTIONS[0] <= len(entries) <= AB_CONNECTIONS[1], len(entries)


def test_reapplying_under_load_loses_no_request(lab: Lab, backend: str, tmp_path: Path) -> None:
    """`nfc apply` switches between web-notrack.yaml and its stateful control
    again and again while wrk and ab load nginx: the switch is one
    transaction, so no request fails and no connection breaks, keep-alive
    connections included (tracked from the middle of their stream on, or
    untracked again)."""
    applied = lab.apply(WEB, backend=backend)
    assert applied.returncode == 0, applied.stderr
    nginx = serve_web(lab, tmp_path / "nginx")
    control = stateful_control(tmp_path)
    keep_alive = lab.client_a.popen(*wrk_command(SERVER_A4, 80, connections=CONNECTIONS, seconds=2))
    short = lab.client_a.popen(*ab_command(SERVER_A4, 81, seconds=2, concurrency=CONCURRENCY))
    assert wait_until(lambda: bool(nginx.peers(80)) and bool(nginx.peers(81)), timeout=20), nginx.errors()
    # until both load clients are done, so that every switch but the last is under load
    switches = 0
    while keep_alive.poll() is None or short.poll() is None:
        applied = lab.apply(control if switches % 2 == 0 else WEB, backend=backend)
        assert applied.returncode == 0, applied.stderr
        switches += 1
    reports = collect(keep_alive, parse_wrk), collect(short, parse_ab)
    assert_all_served(*reports)
    assert set(nginx.statuses()) == {"200"}, nginx.statuses()
    # ab stops at its time limit with up to CONCURRENCY requests in flight, which nginx still answers
    served = nginx.peers(81)[CLIENT_A4]
    assert reports[1].requests <= served <= reports[1].requests + CONCURRENCY, (served, reports[1])
    assert switches >= 1


@pytest.fixture
def web_router(tmp_path: Path) -> Iterator[WebRouter]:
    require_lab()
    router = WebRouter(tmp_path / "router")
    try:
        router.build()
        yield router
    finally:
        router.teardown()


def test_router_policy_masquerades_and_forwards_a_port_under_load(
    backend: str, web_router: WebRouter
) -> None:
    """router.yaml as shipped: wrk and ab from the LAN to nginx on the
    internet through masquerade, and from the internet to the LAN's nginx
    through the port forward, every request served and one conntrack entry
    per connection; what the policy does not forward stays silent."""
    router = web_router
    router.apply(ROUTER, backend)
    # the router's entries of one direction's load: wrk's connections and ab's
    low, high = (WRK_CONNECTIONS + n for n in AB_CONNECTIONS)
    internet = router.serve(router.wan, "internet", [f"{WAN4}:80"])
    inside = router.serve(router.lan, "inside", [f"{LAN4}:80", f"{LAN4}:{UNFORWARDED}"])

    # the LAN to a web server on the internet, through masquerade
    keep_alive = wrk(router.lan, WAN4, 80, connections=CONNECTIONS)
    short = ab(router.lan, WAN4, 80, requests=SHORT, concurrency=CONCURRENCY)
    assert_all_served(keep_alive, short)
    # every request reached the internet from the router's address, none from the LAN's
    assert set(internet.statuses()) == {"200"}, internet.statuses()
    assert list(internet.peers(80)) == [ROUTER_WAN4], internet.peers(80)
    assert internet.peers(80)[ROUTER_WAN4] >= keep_alive.requests + short.requests
    # the router tracks each connection once: wrk's keep-alive ones and ab's
    # (in TIME_WAIT), each translated to the router's address
    outbound = conntrack_entries(router.router, "--orig-dst", WAN4, "--dport", "80")
    assert low <= len(outbound) <= high, len(outbound)
    assert all(f"dst={ROUTER_WAN4}" in entry for entry in outbound), outbound[:3]

    # the internet to the router's port 8080: the LAN web server, by the port forward
    forwarded = wrk(router.wan, ROUTER_WAN4, FORWARDED, connections=CONNECTIONS)
    forwarded_short = ab(router.wan, ROUTER_WAN4, FORWARDED, requests=SHORT, concurrency=CONCURRENCY)
    assert_all_served(forwarded, forwarded_short)
    assert set(inside.statuses()) == {"200"}, inside.statuses()
    assert list(inside.peers(80)) == [WAN4]
    assert inside.peers(80)[WAN4] >= forwarded.requests + forwarded_short.requests
    inbound = conntrack_entries(router.router, "--orig-dst", ROUTER_WAN4, "--dport", str(FORWARDED))
    assert low <= len(inbound) <= high, len(inbound)

    # What the policy does not allow gets no answer: the LAN's addresses
    # from the internet (the WAN host routes them to the router), a port
    # the router does not forward, and the router's own web port.
    verdicts = probe(
        router.wan,
        (LAN4, 80, WAN4),
        (LAN4, UNFORWARDED, WAN4),
        (ROUTER_WAN4, UNFORWARDED, WAN4),
        (ROUTER_WAN4, 80, WAN4),
        (ROUTER_WAN4, FORWARDED, WAN4),
    )
    assert verdicts == ["drop", "drop", "drop", "drop", "accept"]
    assert inside.peers(UNFORWARDED) == {}
    # and nothing else is in the router's table: dropped attempts leave no entry
    total = router.router.conntrack_count()
    assert total <= len(outbound) + len(inbound) + 1 + NEAR_ZERO, conntrack_entries(router.router)


def test_the_web_servers_own_requests_to_web_ports_elsewhere_stay_tracked(
    lab: Lab, backend: str, tmp_path: Path
) -> None:
    """web-notrack.yaml's notrack entry serves: requests in to the web ports,
    answers out from them. The server's own HTTP requests to port 80 of
    another host (an upstream, a package mirror) are not its to untrack:
    they are tracked, and their answers come back through `state: auto`'s
    established accept, the only way past the input chain's drop."""
    applied = lab.apply(WEB, backend=backend)
    assert applied.returncode == 0, applied.stderr
    upstream = Nginx(lab.client_b, tmp_path / "upstream", "upstream", [f"{CLIENT_B4}:80"]).start()
    assert upstream.process is not None
    lab.servers.append(upstream.process)
    short = ab(lab.server, CLIENT_B4, 80, requests=SHORT, concurrency=CONCURRENCY)
    keep_alive = ab(lab.server, CLIENT_B4, 80, requests=SHORT, concurrency=CONCURRENCY, keep_alive=True)
    assert_all_served(short, keep_alive)
    assert upstream.peers(80) == {SERVER_B4: 2 * SHORT}
    # an entry per connection: ab's short ones, and its CONCURRENCY (up to twice that) keep-alive ones
    entries = conntrack_entries(lab.server, "--orig-dst", CLIENT_B4, "--dport", "80")
    low, high = AB_CONNECTIONS[0] + CONCURRENCY, AB_CONNECTIONS[1] + 2 * CONCURRENCY
    assert low <= len(entries) <= high, len(entries)


def test_the_web_servers_own_connections_to_its_web_ports_leave_no_entry(
    lab: Lab, backend: str, tmp_path: Path
) -> None:
    """A health check, or a reverse proxy in front of a backend on the same
    host, connects to the web ports from the host itself (over loopback, to
    one of its own addresses). web-notrack.yaml says those ports bypass
    connection tracking in both directions; such connections should leave
    no entry either. Conntrack first sees the host's request in output
    (prerouting's notrack comes too late for a packet that already has an
    entry), so nfc untracks it there, for packets leaving through lo; without
    that, every connection left an [UNREPLIED] SYN_SENT entry, as many as
    without notrack and for as long."""
    applied = lab.apply(WEB, backend=backend)
    assert applied.returncode == 0, applied.stderr
    serve_web(lab, tmp_path / "nginx")
    own4 = ab(lab.server, SERVER_A4, 81, requests=100, concurrency=CONCURRENCY)
    own6 = ab(lab.server, SERVER_A6, WEB_PORTS[-1], requests=100, concurrency=CONCURRENCY)
    assert_all_served(own4, own6)
    assert lab.server.conntrack_count() <= NEAR_ZERO, conntrack_entries(lab.server)[:3]


FAR = (("10.77.5.1", "fd00:77:5::1"), ("10.77.5.2", "fd00:77:5::2"))  # (client A's side, far client)
NARROW_MTU = 1280


def test_downloads_over_a_narrower_path_shrink_to_its_mtu(lab: Lab, backend: str, tmp_path: Path) -> None:
    """Path MTU discovery of an untracked web server: a far client behind
    client A, whose link to it is narrower (1,280 bytes) than the server's
    1,500, downloads /big. The server's full-sized segments do not fit, so
    client A answers each with "fragmentation needed" (ICMPv6 "packet too
    big"): ICMP errors about untracked packets, which conntrack calls
    invalid. The policy's essential ICMP accepts, ahead of the invalid drop,
    let them in; the server lowers its path MTU and every download completes."""
    applied = lab.apply(WEB, backend=backend)
    assert applied.returncode == 0, applied.stderr
    (near4, near6), (far4, far6) = FAR
    far = Namespace(f"nfc-{lab.tag}-f")
    _ip("netns", "add", far.name)
    lab.extra.append(far)
    _batch(
        lab.client_a,
        [
            f"link add eth-f type veth peer name eth0 netns {far.name}",
            f"address add {near4}/24 dev eth-f",
            f"address add {near6}/64 dev eth-f nodad",
            f"link set eth-f mtu {NARROW_MTU} up",
        ],
    )
    _batch(
        far,
        [
            "link set lo up",
            f"address add {far4}/24 dev eth0",
            f"address add {far6}/64 dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {near4}",
            f"route add ::/0 via {near6}",
        ],
    )
    lab.client_a.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    _batch(lab.server, [f"route add {far4}/32 via {CLIENT_A4}", f"route add {far6}/128 via {CLIENT_A6}"])
    serve_web(lab, tmp_path / "nginx")

    for server, port in ((SERVER_A4, 80), (SERVER_A6, WEB_PORTS[-1])):
        downloads = ab(far, server, port, requests=20, concurrency=2, path="/big")
        assert_all_served(downloads)
        assert downloads.requests == 20, downloads
    # the server learnt the narrower path from client A's ICMP errors
    for address in (far4, far6):
        route = lab.server.run("ip", "route", "get", address).stdout
        assert f"mtu {NARROW_MTU}" in route, route
    assert lab.server.conntrack_count() <= NEAR_ZERO, conntrack_entries(lab.server)
