"""Real traffic for the namespace tests: a DNS/TCP responder and clients.

Run inside a namespace (`ip netns exec NS python3 traffic.py ...`). Plain
sockets only, so nothing but the standard library is needed there. Every
loop is bounded in count and time."""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator

QUESTION = b"\x07example\x03com\x00\x00\x01\x00\x01"  # example.com. A IN


def dns_query(query_id: int) -> bytes:
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + QUESTION


def dns_answer(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    (query_id,) = struct.unpack("!H", query[:2])
    return struct.pack("!HHHHHH", query_id, 0x8180, 1, 0, 0, 0) + query[12:]


def _dual_stack(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    return sock


def serve(args: argparse.Namespace) -> None:
    """Answer DNS on the UDP ports, greet on the TCP ports, until the deadline."""
    udp = [_dual_stack(socket.SOCK_DGRAM, p) for p in args.udp]
    tcp = [_dual_stack(socket.SOCK_STREAM, p) for p in args.tcp]
    for sock in tcp:
        sock.listen(256)
    selector = selectors.DefaultSelector()
    for sock in udp + tcp:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            if sock.type == socket.SOCK_DGRAM:
                while True:
                    try:
                        data, peer = sock.recvfrom(4096)
                    except BlockingIOError:
                        break
                    answer = dns_answer(data)
                    if answer:
                        sock.sendto(answer, peer)
            else:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                threading.Thread(target=_greet, args=(conn, sock.getsockname()[1]), daemon=True).start()


def _greet(conn: socket.socket, port: int) -> None:
    with conn:
        conn.settimeout(2)
        try:
            conn.sendall(f"hello from {port}\n".encode())
            conn.recv(64)
        except OSError:
            pass


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def query(args: argparse.Namespace) -> None:
    """Send DNS queries, each from a fresh source port, and count the answers."""
    sources = args.sources.split(",")
    selector = selectors.DefaultSelector()
    outstanding: dict[socket.socket, tuple[int, float]] = {}
    answered = sent = 0
    interval = 1.0 / args.rate if args.rate else 0.0
    start = time.monotonic()
    next_send = start
    last_send = start
    hard_stop = start + args.count * max(interval, 0.01) + args.timeout + 30

    def collect(wait: float) -> None:
        nonlocal answered
        for key, _ in selector.select(timeout=wait):
            sock = key.fileobj
            query_id, _ = outstanding.pop(sock)
            selector.unregister(sock)
            try:
                data = sock.recv(4096)
                if data[:2] == struct.pack("!H", query_id) and data[2] & 0x80:
                    answered += 1
            except OSError:
                pass
            sock.close()
        now = time.monotonic()
        for sock, (_, sent_at) in list(outstanding.items()):
            if now - sent_at > args.timeout:
                outstanding.pop(sock)
                selector.unregister(sock)
                sock.close()

    while (sent < args.count or outstanding) and time.monotonic() < hard_stop:
        now = time.monotonic()
        if sent < args.count and len(outstanding) < args.window and now >= next_send:
            source = sources[sent % len(sources)]
            sock = socket.socket(_family(args.server), socket.SOCK_DGRAM)
            sock.bind((source, 0))
            query_id = (sent * 7919 + 1) & 0xFFFF
            sock.sendto(dns_query(query_id), (args.server, args.port))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            outstanding[sock] = (query_id, time.monotonic())
            sent += 1
            last_send = time.monotonic()
            next_send = start + sent * interval
            continue
        collect(0.005 if sent < args.count else 0.05)
    result = {"sent": sent, "answered": answered, "send_seconds": last_send - start}
    print(json.dumps(result), flush=True)


def connect(args: argparse.Namespace) -> None:
    """Open TCP connections and read the greeting of each."""
    ok = 0
    for _ in range(args.count):
        try:
            with socket.create_connection(
                (args.server, args.port), timeout=args.timeout, source_address=(args.source, 0)
            ) as sock:
                if sock.recv(64).startswith(b"hello"):
                    ok += 1
        except OSError:
            pass
    print(json.dumps({"attempts": args.count, "connected": ok}), flush=True)


def _until_settled(
    selector: selectors.BaseSelector, items: list[dict], args: argparse.Namespace
) -> Iterator[tuple[selectors.SelectorKey, int]]:
    """The sockets of `items` (registered with their index) as they become
    ready. A socket still silent after `args.timeout` seconds is given up,
    unless its item says `"answer": true` (the caller expects an answer):
    that one is awaited up to `args.patience` seconds, so that a busy
    machine's slow answer is not taken for a drop, while the silences the
    caller expects share the one shorter wait."""
    start = time.monotonic()
    silence_until = start + args.timeout
    answer_until = start + max(args.timeout, args.patience)

    def deadline() -> float:
        awaited = any(items[key.data].get("answer") for key in selector.get_map().values())
        return answer_until if awaited else silence_until

    while selector.get_map() and time.monotonic() < deadline():
        yield from selector.select(timeout=max(0.0, deadline() - time.monotonic()))


def probe(args: argparse.Namespace) -> None:
    """Send one packet or connection attempt per probe, all at once, and say
    what became of each: accept (answered), reject (refused) or drop."""
    probes = json.loads(args.probes)
    selector = selectors.DefaultSelector()
    verdicts = ["drop"] * len(probes)
    for index, item in enumerate(probes):
        family = _family(item["server"])
        if item["proto"] == "udp":
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((item["source"], item.get("sport", 0)))
            sock.connect((item["server"], item["port"]))
            sock.send(dns_query(index + 1))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        else:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((item["source"], item.get("sport", 0)))
            sock.setblocking(False)
            sock.connect_ex((item["server"], item["port"]))
            selector.register(sock, selectors.EVENT_WRITE, index)
    for key, _ in _until_settled(selector, probes, args):
        sock, index = key.fileobj, key.data
        selector.unregister(sock)
        if sock.type == socket.SOCK_DGRAM:
            try:
                sock.recv(4096)
                verdicts[index] = "accept"
            except ConnectionRefusedError:
                verdicts[index] = "reject"
            except OSError:
                pass
        else:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            verdicts[index] = "accept" if error == 0 else "reject" if error == 111 else "drop"
        sock.close()
    print(json.dumps(verdicts), flush=True)


def tell_peer(args: argparse.Namespace) -> None:
    """Answer every TCP connection and UDP datagram with NAME and the peer's
    address as this host sees it, until the deadline."""
    socks = [_dual_stack(socket.SOCK_DGRAM, p) for p in args.udp]
    for port in args.tcp:
        sock = _dual_stack(socket.SOCK_STREAM, port)
        sock.listen(64)
        socks.append(sock)
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            try:
                if sock.type == socket.SOCK_DGRAM:
                    _, peer = sock.recvfrom(4096)
                    sock.sendto(_told(args.name, peer), peer)
                else:
                    conn, peer = sock.accept()
                    with conn:
                        conn.settimeout(1)
                        conn.sendall(_told(args.name, peer))
            except OSError:
                pass


def _told(name: str, peer: tuple) -> bytes:
    address = peer[0].removeprefix("::ffff:")  # an IPv4 peer of a dual-stack socket
    return f"{name} {address}".encode()


def ask(args: argparse.Namespace) -> None:
    """Send one datagram or open one connection per question, all at once,
    and print the answer of each (null when none came in time)."""
    questions = json.loads(args.questions)
    selector = selectors.DefaultSelector()
    answers: list[str | None] = [None] * len(questions)
    for index, item in enumerate(questions):
        kind = socket.SOCK_DGRAM if item["proto"] == "udp" else socket.SOCK_STREAM
        sock = socket.socket(_family(item["server"]), kind)
        if item.get("source"):
            sock.bind((item["source"], 0))
        sock.setblocking(False)
        sock.connect_ex((item["server"], item["port"]))
        if kind == socket.SOCK_DGRAM:
            sock.send(b"?")
        selector.register(sock, selectors.EVENT_READ, index)
    for key, _ in _until_settled(selector, questions, args):
        selector.unregister(key.fileobj)
        with contextlib.suppress(OSError):
            answers[key.data] = key.fileobj.recv(256).decode() or None
        key.fileobj.close()
    print(json.dumps(answers), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("serve")
    server.add_argument("--udp", type=int, nargs="*", default=[])
    server.add_argument("--tcp", type=int, nargs="*", default=[])
    server.add_argument("--lifetime", type=float, default=120)
    client = commands.add_parser("query")
    client.add_argument("--server", required=True)
    client.add_argument("--port", type=int, default=53)
    client.add_argument("--sources", required=True, help="comma-separated source addresses")
    client.add_argument("--count", type=int, default=1)
    client.add_argument("--window", type=int, default=64)
    client.add_argument("--rate", type=float, default=0.0, help="queries per second; 0: as fast as possible")
    client.add_argument("--timeout", type=float, default=1.0)
    tcp = commands.add_parser("connect")
    tcp.add_argument("--server", required=True)
    tcp.add_argument("--port", type=int, required=True)
    tcp.add_argument("--source", required=True)
    tcp.add_argument("--count", type=int, default=1)
    tcp.add_argument("--timeout", type=float, default=1.5)
    many = commands.add_parser("probe")
    many.add_argument("probes", help='JSON list of {"proto", "server", "port", "source"}')
    many.add_argument("--timeout", type=float, default=1.0, help="how long silence is waited for")
    many.add_argument("--patience", type=float, default=0.0, help='how long one marked "answer": true is')
    peer = commands.add_parser("tell-peer")
    peer.add_argument("--name", required=True)
    peer.add_argument("--udp", type=int, nargs="*", default=[])
    peer.add_argument("--tcp", type=int, nargs="*", default=[])
    peer.add_argument("--lifetime", type=float, default=120)
    asking = commands.add_parser("ask")
    asking.add_argument("questions", help='JSON list of {"proto", "server", "port", "source"?}')
    asking.add_argument("--timeout", type=float, default=1.0, help="how long silence is waited for")
    asking.add_argument("--patience", type=float, default=0.0, help='how long one marked "answer": true is')
    args = parser.parse_args()
    run = {"serve": serve, "query": query, "connect": connect, "probe": probe}
    run |= {"tell-peer": tell_peer, "ask": ask}
    run[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
