"""Real web software under load, behind the flagship web and router
policies (root; Debian packages nginx-light, wrk, apache2-utils):

    sudo nice -n 10 .venv/bin/python bench/web_load.py
    sudo nice -n 10 .venv/bin/python bench/web_load.py --seconds 5 --connections 100 --requests 5000

The labs of the namespace tests (tests/lab.py, tests/web_software.py), fresh
for every row. Rows, for each backend:

- web: nginx in the server namespace behind policies/web-notrack.yaml, or
  behind the same rules without their notrack entry (stateful); wrk
  (keep-alive connections) and ab (a connection per request) load it from a
  client namespace;
- router: policies/router.yaml on a router between a LAN and a WAN host,
  each running nginx; wrk and ab from the LAN to the WAN host through
  masquerade, then from the WAN host to the router's forwarded port 8080,
  which the LAN web server answers.

Each row prints the load clients' own figures (requests, requests per
second, non-2xx responses, socket errors) and the conntrack count of the
namespace that enforces the policy (the server, the router) after the load.
It asserts nothing. The namespaces are deleted on exit, also on an error or
a signal."""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# web_software imports conftest before lab (they import each other, conftest first)

from web_software import (  # noqa: E402
    FORWARDED,
    LAN4,
    ROUTER,
    ROUTER_WAN4,
    WAN4,
    WEB,
    WebRouter,
    ab,
    serve_web,
    stateful_control,
    wrk,
)

from nfc.backends import BACKENDS  # noqa: E402

from lab import SERVER_A4, Lab, Namespace  # noqa: E402


def load(args: argparse.Namespace, client: Namespace, address: str, port: int) -> str:
    """wrk's keep-alive load, then ab's connection per request, from client."""
    keep_alive = wrk(client, address, port, connections=args.connections, seconds=args.seconds)
    short = ab(client, address, port, requests=args.requests, concurrency=args.concurrency)
    return f"{keep_alive}; {short}"


def web_row(directory: Path, backend: str, policy: Path, args: argparse.Namespace) -> str:
    lab = Lab(secrets.token_hex(3), directory / secrets.token_hex(3) / "state")
    try:
        lab.build()
        applied = lab.apply(policy, backend=backend)
        if applied.returncode != 0:
            return f"nfc apply failed: {applied.stderr.strip()}"
        serve_web(lab, lab.state_dir.parent / "nginx")
        figures = load(args, lab.client_a, SERVER_A4, 80)
        return f"{figures}; conntrack {lab.server.conntrack_count()}"
    finally:
        lab.teardown()


def router_row(directory: Path, backend: str, args: argparse.Namespace) -> list[str]:
    router = WebRouter(directory / secrets.token_hex(3))
    try:
        router.build()
        router.apply(ROUTER, backend)
        router.serve(router.wan, "internet", [f"{WAN4}:80"])
        router.serve(router.lan, "inside", [f"{LAN4}:80"])
        masquerade = load(args, router.lan, WAN4, 80)
        after_masquerade = router.router.conntrack_count()
        port_forward = load(args, router.wan, ROUTER_WAN4, FORWARDED)
        return [
            f"masquerade    {masquerade}; conntrack {after_masquerade}",
            f"port forward  {port_forward}; conntrack {router.router.conntrack_count()} (both loads)",
        ]
    finally:
        router.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=2, help="wrk's run")
    parser.add_argument("--connections", type=int, default=20, help="wrk's keep-alive connections")
    parser.add_argument("--requests", type=int, default=1000, help="ab's requests, a connection each")
    parser.add_argument("--concurrency", type=int, default=10, help="ab's requests at a time")
    args = parser.parse_args()
    # a signal unwinds through the finally blocks that delete the namespaces
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="nfc-web-load-") as name:
        directory = Path(name)
        for backend in BACKENDS:
            for label, policy in (("notrack", WEB), ("stateful", stateful_control(directory))):
                print(
                    f"{backend:16} web     {label:9} {web_row(directory, backend, policy, args)}", flush=True
                )
            for row in router_row(directory, backend, args):
                print(f"{backend:16} router  {row}", flush=True)


if __name__ == "__main__":
    main()
