"""The fixed words of the policy language: service names, ICMP types,
connection states and reject types. Shipped with nfc (not read from the
host's /etc/services) so that output is reproducible."""

from __future__ import annotations

# IANA service names → port. The same number for TCP, UDP and SCTP.
SERVICES: dict[str, int] = {
    "ftp-data": 20,
    "ftp": 21,
    "ssh": 22,
    "telnet": 23,
    "smtp": 25,
    "domain": 53,
    "dns": 53,
    "bootps": 67,
    "bootpc": 68,
    "tftp": 69,
    "http": 80,
    "www": 80,
    "kerberos": 88,
    "pop3": 110,
    "sunrpc": 111,
    "ident": 113,
    "ntp": 123,
    "epmap": 135,
    "netbios-ns": 137,
    "netbios-dgm": 138,
    "netbios-ssn": 139,
    "imap": 143,
    "snmp": 161,
    "snmp-trap": 162,
    "bgp": 179,
    "ldap": 389,
    "https": 443,
    "microsoft-ds": 445,
    "isakmp": 500,
    "syslog": 514,
    "submissions": 465,
    "submission": 587,
    "ldaps": 636,
    "domain-s": 853,
    "rsync": 873,
    "imaps": 993,
    "pop3s": 995,
    "socks": 1080,
    "openvpn": 1194,
    "ms-sql-s": 1433,
    "radius": 1812,
    "radius-acct": 1813,
    "nfs": 2049,
    "mysql": 3306,
    "rdp": 3389,
    "ipsec-nat-t": 4500,
    "sip": 5060,
    "sips": 5061,
    "postgresql": 5432,
    "amqp": 5672,
    "redis": 6379,
    "memcache": 11211,
    "mongodb": 27017,
    "http-alt": 8080,
    "syslog-tls": 6514,
}

# Other layer-4 protocols that `proto NAME` accepts, with their numbers.
PROTOCOLS: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ospf": 89,
    "pim": 103,
    "vrrp": 112,
    "sctp": 132,
    "udplite": 136,
}
PORT_PROTOCOLS = ("tcp", "udp", "sctp")

CT_STATES = ("new", "established", "related", "invalid", "untracked")
CT_STATUSES = ("dnat", "snat")  # the translations conntrack records (nft `ct status`)

# ICMP and ICMPv6 type names (nft's words) and their numbers.
ICMP_TYPES: dict[str, int] = {
    "echo-reply": 0,
    "destination-unreachable": 3,
    "source-quench": 4,
    "redirect": 5,
    "echo-request": 8,
    "router-advertisement": 9,
    "router-solicitation": 10,
    "time-exceeded": 11,
    "parameter-problem": 12,
    "timestamp-request": 13,
    "timestamp-reply": 14,
    "info-request": 15,
    "info-reply": 16,
    "address-mask-request": 17,
    "address-mask-reply": 18,
}

ICMPV6_TYPES: dict[str, int] = {
    "destination-unreachable": 1,
    "packet-too-big": 2,
    "time-exceeded": 3,
    "parameter-problem": 4,
    "echo-request": 128,
    "echo-reply": 129,
    "mld-listener-query": 130,
    "mld-listener-report": 131,
    "mld-listener-done": 132,
    "nd-router-solicit": 133,
    "nd-router-advert": 134,
    "nd-neighbor-solicit": 135,
    "nd-neighbor-advert": 136,
    "nd-redirect": 137,
    "router-renumbering": 138,
    "ind-neighbor-solicit": 141,
    "ind-neighbor-advert": 142,
    "mld2-listener-report": 143,
}

# What `icmp: essential` accepts. Errors first: they are what ICMP errors of
# untracked flows look like (ct state invalid), so they come before the
# invalid drop. Neighbour discovery only where the host itself takes part.
ESSENTIAL_ICMP_ERRORS = ("destination-unreachable", "time-exceeded", "parameter-problem")
ESSENTIAL_ICMPV6_ERRORS = (
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
)
ESSENTIAL_ICMPV6_DISCOVERY = {
    "input": ("nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"),
    "forward": (),
    "output": ("nd-router-solicit", "nd-neighbor-solicit", "nd-neighbor-advert"),
}
# Multicast listener discovery: routers query (input), the host reports what
# it listens to (output). Without it an MLD-snooping switch stops forwarding
# the host's multicast, neighbour solicitations included. MLD is link-local
# by definition (RFC 2710, 3810), so only from a link-local source.
ESSENTIAL_MLD = ("mld-listener-query", "mld-listener-report", "mld-listener-done", "mld2-listener-report")
ESSENTIAL_MLD_CHAINS = ("input", "output")
LINK_LOCAL_V6 = "fe80::/10"

# `reject with icmp TYPE`: the type as written (ICMP names) → its IPv6
# counterpart, or None where ICMPv6 has none.
REJECT_ICMP_TYPES: dict[str, str | None] = {
    "port-unreachable": "port-unreachable",
    "host-unreachable": "addr-unreachable",
    "net-unreachable": "no-route",
    "admin-prohibited": "admin-prohibited",
    "host-prohibited": "admin-prohibited",
    "net-prohibited": "admin-prohibited",
    "prot-unreachable": None,
}

# Types that ICMPv4 and ICMPv6 both have but under different codes, so a
# dual-family rule is split per family rather than use nft's icmpx.
REJECT_NEEDS_FAMILY = ("host-prohibited", "net-prohibited")
# nft's family-neutral icmpx types for the rest.
REJECT_ICMPX = {
    "port-unreachable": "port-unreachable",
    "host-unreachable": "host-unreachable",
    "net-unreachable": "no-route",
    "admin-prohibited": "admin-prohibited",
}

# nft's (and iptables') words for what nfc writes otherwise: a policy
# written by someone who knows nft gets pointed to nfc's word.
FOREIGN_WORDS = {
    "saddr": "from",
    "daddr": "to",
    "iifname": "iif",
    "oifname": "oif",
    "ipv6-icmp": "icmpv6",
    "icmp6": "icmpv6",
    "port": "dport' or 'sport",
    "l4proto": "proto",
    "nfproto": "ip' or 'ip6",
    "meta": "proto",
}


def foreign_word_hint(word: str) -> str | None:
    """'nfc writes X' for a word of nft's that nfc spells otherwise."""
    ours = FOREIGN_WORDS.get(word)
    return f"nfc writes '{ours}' where nft writes '{word}'" if ours else None


# Words nft 1.0.6 reads as keywords where a table name belongs (found by
# loading 'table inet WORD' for every word of nft(8)); a table with such a
# name cannot be loaded, so the policy must not use one.
NFT_KEYWORDS = frozenset(
    {
        "accept",
        "add",
        "ah",
        "all",
        "and",
        "arp",
        "bridge",
        "cgroup",
        "chain",
        "comment",
        "comp",
        "constant",
        "continue",
        "counter",
        "cpu",
        "create",
        "ct",
        "day",
        "dccp",
        "define",
        "delete",
        "describe",
        "device",
        "devices",
        "dnat",
        "drop",
        "dst",
        "dup",
        "dynamic",
        "ecn",
        "element",
        "elements",
        "esp",
        "ether",
        "exists",
        "expires",
        "exthdr",
        "fib",
        "flags",
        "flow",
        "flowtable",
        "flush",
        "frag",
        "fwd",
        "get",
        "goto",
        "handle",
        "hbh",
        "hook",
        "hour",
        "ibriport",
        "ibrname",
        "icmp",
        "icmpv6",
        "igmp",
        "iif",
        "iifgroup",
        "iifname",
        "iiftype",
        "include",
        "index",
        "inet",
        "insert",
        "interval",
        "ip",
        "ip6",
        "ipsec",
        "jhash",
        "jump",
        "limit",
        "list",
        "log",
        "lt",
        "map",
        "mark",
        "masquerade",
        "meta",
        "meter",
        "mh",
        "missing",
        "monitor",
        "netdev",
        "nftrace",
        "not",
        "notrack",
        "numgen",
        "obriport",
        "obrname",
        "offload",
        "oif",
        "oifgroup",
        "oifname",
        "oiftype",
        "or",
        "osf",
        "pkttype",
        "policy",
        "position",
        "priority",
        "queue",
        "quota",
        "random",
        "redefine",
        "redirect",
        "reject",
        "rename",
        "replace",
        "reset",
        "return",
        "rt",
        "rt0",
        "rtclassid",
        "rule",
        "ruleset",
        "sctp",
        "secmark",
        "set",
        "size",
        "skgid",
        "skuid",
        "snat",
        "socket",
        "srh",
        "symhash",
        "synproxy",
        "table",
        "tcp",
        "th",
        "time",
        "timeout",
        "tproxy",
        "type",
        "typeof",
        "udp",
        "udplite",
        "undefine",
        "update",
        "vlan",
        "vmap",
        "xt",
    }
)
