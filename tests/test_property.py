"""Property tests of the front end: any rule string either compiles or is a
clean PolicyError at FILE:LINE:COL, never another exception; and compiling
the same valid policy twice gives byte-identical artifacts."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from nfc.api import compile_policy
from nfc.artifacts import MANIFEST, build
from nfc.backends import BACKENDS
from nfc.errors import PolicyError

MEMORY = 8 << 30
WORD_BITS = 64
CLI_RECURSION_LIMIT = 1000  # sys.getrecursionlimit() of a fresh interpreter, as `nfc` runs
# nft first (the brief's backend), then every other backend nfc has.
BACKEND_NAMES = ("nft", *sorted(name for name in BACKENDS if name != "nft"))

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,  # leave no .hypothesis/ directory behind in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)

INTERFACE_LISTS = {"lan": ["eth1", "br-lan"], "containers": "veth*"}
DEFINES = {
    "internal": ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"],
    "admins": "192.0.2.10",
    "v6nets": ["2001:db8::/32", "2001:db8:1::/48"],
    "dns": 53,
    "web": [80, 443, "8000-8080"],
    "ephemeral": "1024-65535",
}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property")


# --------------------------------------------------------------------------
# helpers


def _policy(rule: Any, where: str) -> dict[str, Any]:
    """A minimal policy holding `rule` (a string or a rule mapping) in `where`:
    a chain name, or "notrack" for conntrack.notrack."""
    policy: dict[str, Any] = {"nfc": 1, "define": DEFINES, "interfaces": INTERFACE_LISTS}
    if where == "notrack":
        policy["conntrack"] = {"notrack": [rule]}
        policy["input"] = {"policy": "drop"}
    else:
        policy[where] = {"policy": "drop" if where != "output" else "accept", "rules": [rule]}
    return policy


def _write(directory: Path, policy: dict[str, Any], allow_unicode: bool = True) -> str:
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, allow_unicode=allow_unicode, sort_keys=False), encoding="utf-8")
    return str(path)


def _compile(path: str, backend: str = "nft") -> dict[str, str]:
    """Compile in a fresh thread under Python's default recursion limit, so
    the compiler has the stack headroom the nfc command has, whatever the
    stack depth Hypothesis calls the test at (it also raises the limit while
    it runs). Without this, a deep recursion in the compiler would go
    unnoticed here, or turn up as a flaky failure."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            ruleset, sources = compile_policy(path, memory=MEMORY, word_bits=WORD_BITS, allow_empty=True)
            outcome["files"] = build(ruleset, backend, sources)
        except BaseException as exc:
            outcome["error"] = exc

    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(CLI_RECURSION_LIMIT)
    try:
        worker = threading.Thread(target=work, name="compile")
        worker.start()
        worker.join()
    finally:
        sys.setrecursionlimit(saved)
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome["files"]


def _check_artifacts(files: dict[str, str]) -> None:
    """What any successful compile must give: rulesets made of printable
    lines whose quoted strings are all closed (nothing from the policy can
    break out of a comment or log prefix), and a JSON manifest."""
    assert MANIFEST in files
    json.loads(files[MANIFEST])
    for name, text in files.items():
        for number, line in enumerate(text.split("\n"), start=1):
            assert all(ch == "\t" or ch.isprintable() for ch in line), (name, number, line)
            assert line.count('"') % 2 == 0, (name, number, line)


def _check_error(exc: PolicyError, path: str) -> None:
    lines = Path(path).read_text(encoding="utf-8").count("\n") + 1
    assert exc.loc.file == path, exc.render()
    assert exc.loc.line >= 1, exc.render()
    assert exc.loc.col >= 1, exc.render()
    assert exc.loc.line <= lines, exc.render()
    assert exc.render().startswith(f"{path}:"), exc.render()
    assert exc.message, exc.render()


def _compiles_or_fails_cleanly(path: str) -> None:
    """The property itself: for each backend, success or a PolicyError
    located in `path`; nothing else."""
    for backend in BACKEND_NAMES:
        try:
            files = _compile(path, backend)
        except PolicyError as exc:
            _check_error(exc, path)
            event(f"PolicyError ({backend})", exc.message.split("'")[0][:40])  # --hypothesis-show-statistics
            if backend == "nft":
                return  # the front end refused it: no backend gets to see it
            continue
        event(f"compiled ({backend})")
        _check_artifacts(files)


def _wrap(rule: str, form: str) -> Any:
    if form == "string":
        return rule
    if form == "mapping":
        return {"rule": rule}
    return {"rule": rule, "comment": "from a mapping", "expires": "2099-01-01"}


WHERE = st.sampled_from(("input", "input", "output", "forward", "notrack"))
FORM = st.sampled_from(("string", "string", "mapping", "annotated"))


# --------------------------------------------------------------------------
# (a) arbitrary text

# Dense in the characters that matter to YAML, the rule grammar and the
# generated nft text, plus anything else Unicode has (controls included).
SPECIAL = list("\"'\\{}[]$,/-:.#&*!|>%@`=?~ \t\n\r\x00\x0b\x0c\x1b\x7f\x85\u2028\ufeff")
ARBITRARY = st.text(alphabet=st.one_of(st.sampled_from(SPECIAL), st.characters()), max_size=120)


@SETTINGS
@given(rule=ARBITRARY, where=WHERE, form=FORM, allow_unicode=st.booleans())
@example(rule="x" * 5000, where="input", form="string", allow_unicode=True)
@example(rule="", where="input", form="string", allow_unicode=True)
@example(rule="\x00", where="notrack", form="mapping", allow_unicode=False)
@example(rule='accept comment "\u202e"', where="input", form="string", allow_unicode=True)
def test_arbitrary_text_compiles_or_fails_cleanly(
    policy_dir: Path, rule: str, where: str, form: str, allow_unicode: bool
) -> None:
    path = _write(policy_dir, _policy(_wrap(rule, form), where), allow_unicode)
    _compiles_or_fails_cleanly(path)


@settings(SETTINGS, max_examples=150)
@given(comment=ARBITRARY, rule=st.sampled_from(("accept tcp dport 22", "udp dport 53")))
def test_arbitrary_annotation_compiles_or_fails_cleanly(policy_dir: Path, comment: str, rule: str) -> None:
    where = "notrack" if rule.startswith("udp") else "input"
    path = _write(policy_dir, _policy({"rule": rule, "comment": comment}, where))
    _compiles_or_fails_cleanly(path)


# --------------------------------------------------------------------------
# (b) near-grammar: words of the language in any order, and clauses of the
# grammar with odd values in them

KEYWORDS = (
    "accept", "drop", "reject", "with", "tcp", "reset", "icmp", "icmpv6", "ip", "ip6", "udp", "sctp",
    "proto", "sport", "dport", "from", "to", "not", "iif", "oif", "ct", "state", "new", "established",
    "related", "invalid", "untracked", "type", "echo-request", "echo-reply", "destination-unreachable",
    "port-unreachable", "host-prohibited", "prot-unreachable", "admin-prohibited", "limit", "over",
    "burst", "packets", "bytes", "kbytes", "mbytes", "per", "saddr", "daddr", "size", "name", "log",
    "prefix", "level", "info", "warn", "debug", "emerg", "counter", "comment", "second", "minute",
    "hour", "day", "domain", "ssh", "https", "gre", "esp", "bogus", "status", "dnat", "snat",
    "masquerade", "redirect",
)  # fmt: skip
PUNCTUATION = ("{", "}", ",", "-", "/", "{ ", " }", ", ")
VARIABLES = ("$internal", "$admins", "$v6nets", "$dns", "$web", "$ephemeral", "$nosuch", "$", "$1")
NUMBERS = (
    "0", "1", "5", "22", "53", "255", "256", "443", "1024", "65535", "65536", "4294967296",
    "99999999999999999999", "1024-65535", "65535-1", "53-53", "10/second", "5/minute",
    "1 mbytes/second", "/24", "/64", "/24,/64", "/0", "/33", "/129", "/24,", "47",
)  # fmt: skip
ADDRESSES = (
    "10.0.0.0/8", "10.0.0.1", "192.0.2.10", "10.0.0.1/8", "0.0.0.0/0", "256.1.1.1", "1.2.3",
    "1.2.3.4.5", "2001:db8::/32", "fd00::/8", "::1", "::", "::/0", "2001:db8::/129",
    "fe80::1%eth0", ".", ":", "::ffff:10.0.0.1", "10.0.0.0/33", "1.2.3.4/",
)  # fmt: skip
INTERFACES = (
    "eth0", "eth+", "veth*", "lo", '"eth0"', '"a b"', "abcdefghijklmnopq", "*", "eth0**", "$lan",
    "$containers", "$internal", "{ eth0, veth* }", "{$lan, wg0}", "{}",
)  # fmt: skip
STRINGS = ('"ssh: "', '"x"', '""', '"unterminated', '"a\\"b"', '"$x"', '"tab\there"', '"`id`"')
VOCABULARY = st.one_of(
    st.sampled_from(KEYWORDS),
    st.sampled_from(PUNCTUATION),
    st.sampled_from(VARIABLES),
    st.sampled_from(NUMBERS),
    st.sampled_from(ADDRESSES),
    st.sampled_from(INTERFACES),
    st.sampled_from(STRINGS),
    st.integers(min_value=-2, max_value=70000).map(str),
    st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True),
)
SEPARATOR = st.sampled_from((" ", " ", " ", " ", "", "  ", "\t", ", "))


@st.composite
def token_soup(draw: st.DrawFn) -> str:
    """Words of the language in any order: mostly syntax errors."""
    head = draw(st.sampled_from(("accept", "drop", "reject", "reject with", "", "deep")))
    if head == "deep":  # address lists nest through 'not'; how deep may they go?
        nots = " not" * draw(st.integers(min_value=0, max_value=1020))
        head = f"accept from{nots} {draw(st.sampled_from(ADDRESSES + VARIABLES))}"
    words = draw(st.lists(st.tuples(VOCABULARY, SEPARATOR), max_size=16))
    text = head + "".join(sep + word for word, sep in words)
    return text.strip() if draw(st.booleans()) else text


def _one_or_set(items: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    sets = st.lists(items, min_size=1, max_size=4).map(lambda xs: "{ " + ", ".join(xs) + " }")
    return st.one_of(items, items, sets)


PORT = st.one_of(
    st.integers(min_value=1, max_value=65535).map(str),
    st.sampled_from(
        (*NUMBERS[:15], "domain", "ssh", "https", "bogus", "$dns", "$web", "$internal", "$nosuch")
    ),
    st.integers(min_value=0, max_value=70000).map(str),
    st.tuples(st.integers(0, 70000), st.integers(0, 70000)).map(lambda r: f"{r[0]}-{r[1]}"),
)
ADDRESS = st.one_of(
    st.sampled_from(ADDRESSES + VARIABLES[:7]),
    st.ip_addresses().map(str),
    st.tuples(st.ip_addresses(), st.integers(0, 128)).map(
        lambda a: str(ipaddress.ip_network(f"{a[0]}/{min(a[1], a[0].max_prefixlen)}", strict=False))
    ),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 33)).map(lambda a: f"{a[0]}/{a[1]}"),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 129)).map(lambda a: f"{a[0]}/{a[1]}"),
)
NAMES = st.sampled_from(
    ("new", "established", "related", "invalid", "untracked", "echo-request", "bogus", "dnat", "snat")
)
RATE = st.one_of(
    st.tuples(st.integers(0, 2**33), st.sampled_from(("second", "minute", "hour", "day", "week"))).map(
        lambda r: f"{r[0]}/{r[1]}"
    ),
    st.tuples(st.integers(0, 5000), st.sampled_from(("bytes", "kbytes", "mbytes")), st.just("second")).map(
        lambda r: f"{r[0]} {r[1]}/{r[2]}"
    ),
)


def _optional(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), strategy)


LIMIT = st.tuples(
    st.sampled_from(("limit", "limit over")),
    RATE,
    _optional(
        st.tuples(st.integers(0, 2**33), st.sampled_from(("", " packets", " bytes", " kbytes"))).map(
            lambda b: f"burst {b[0]}{b[1]}"
        )
    ),
    _optional(
        st.tuples(
            st.sampled_from(("saddr", "daddr")),
            st.sampled_from(("", "/24", "/24,/64", "/0", "/33", "/32,/129", "/16,/48")),
        ).map(lambda p: f"per {p[0]}{p[1]}")
    ),
    _optional(st.integers(0, 2**25).map(lambda n: f"size {n}")),
    _optional(st.sampled_from(("m1", "m2", "input_1", "internal_v4", "x" * 40)).map(lambda n: f"name {n}")),
).map(lambda parts: " ".join(p for p in parts if p))
MATCH = st.one_of(
    st.sampled_from(("tcp", "udp", "sctp", "icmp", "icmpv6", "ip", "ip6", "proto gre", "proto 47",
                     "proto 300", "proto bogus", "ct state new", "icmp type echo-request")),
    st.tuples(st.sampled_from(("dport", "sport")), _one_or_set(PORT)).map(" ".join),
    st.tuples(st.sampled_from(("from", "to", "from not", "to not")), _one_or_set(ADDRESS)).map(" ".join),
    st.tuples(st.sampled_from(("iif", "oif")), st.sampled_from(INTERFACES)).map(" ".join),
    st.tuples(st.sampled_from(("ct state", "ct status", "icmp type", "icmpv6 type")),
              st.lists(NAMES, min_size=1, max_size=3).map(",".join)).map(" ".join),
)  # fmt: skip
TRAILING = st.one_of(
    LIMIT,
    st.just("counter"),
    st.tuples(
        st.just("log"), _optional(st.sampled_from(STRINGS).map(lambda s: f"prefix {s}")),
        _optional(st.sampled_from(("info", "warn", "debug", "loud")).map(lambda lv: f"level {lv}")),
    ).map(lambda parts: " ".join(p for p in parts if p)),
    st.sampled_from(STRINGS).map(lambda s: f"comment {s}"),
)  # fmt: skip
VERDICT = st.sampled_from((
    "accept", "drop", "reject", "reject with tcp reset", "reject with icmp port-unreachable",
    "reject with icmp host-prohibited", "reject with icmp prot-unreachable", "reject with icmp bogus",
))  # fmt: skip


@st.composite
def near_grammar(draw: st.DrawFn) -> tuple[str, str]:
    """A (rule, where) pair: words of the language in any order, or clauses
    of the grammar with odd values, which gets far into lowering."""
    where = draw(WHERE)
    if draw(st.integers(0, 3)) == 0:
        return draw(token_soup()), where
    # A notrack entry has no verdict; keep one now and then anyway.
    verdict = draw(VERDICT) if where != "notrack" or draw(st.integers(0, 9)) == 0 else ""
    words = [verdict, draw(st.sampled_from(("tcp", "udp", "sctp", "udp", "tcp", "")))]
    for clauses in (draw(st.lists(MATCH, max_size=5)), draw(st.lists(TRAILING, max_size=3))):
        # Most clauses may come once: keep the first of each kind.
        words += {clause.split(" ")[0]: clause for clause in reversed(clauses)}.values()
    if draw(st.integers(0, 4)) == 0:  # one odd word somewhere
        words.insert(draw(st.integers(0, len(words))), draw(VOCABULARY))
    return " ".join(words).strip(), where


DEEP_NOT = "accept from " + "not " * 600 + "10.0.0.1"


@settings(SETTINGS, max_examples=500)
@given(case=near_grammar(), form=FORM)
@example(case=(DEEP_NOT, "input"), form="string")
@example(case=("accept udp dport 53 limit over 10/second per saddr/24,/64 name x", "input"), form="string")
@example(case=("reject with icmp host-prohibited udp", "forward"), form="annotated")
@example(case=("udp sport 53 oif eth0", "notrack"), form="string")
def test_near_grammar_compiles_or_fails_cleanly(policy_dir: Path, case: tuple[str, str], form: str) -> None:
    rule, where = case
    path = _write(policy_dir, _policy(_wrap(rule, form), where))
    _compiles_or_fails_cleanly(path)


# --------------------------------------------------------------------------
# (c) valid policies: they compile, and compile the same way every time

Pick = Callable[[Sequence[Any]], Any]

PORTS = ("53", "1024-65535", "domain", "$dns", "$web", "{ 80, 443 }", "{ 5353-5360, 53 }", "8080")
SOURCES = (
    "10.0.0.0/8", "192.0.2.1", "2001:db8::/32", "$internal", "$admins", "$v6nets",
    "{ 10.1.0.0/16, 10.2.0.0/16 }", "{ 10.3.0.1, 2001:db8::1 }", "not 10.9.0.0/16",
)  # fmt: skip
NOTRACK = (
    "udp dport 53",
    "udp sport 53 dport $ephemeral",
    "tcp dport 179 iif eth1",
    "udp dport 123 from $internal",
    'udp dport 5353 comment "mdns"',
)


def _valid_rule(pick: Pick, index: int, chain: str) -> str:
    proto = pick(("tcp", "udp", "sctp", None))
    verdict = pick(("accept", "drop", "reject", "reject with icmp port-unreachable"))
    if proto == "tcp" and pick((True, False)):
        verdict = "reject with tcp reset"
    words = [verdict]
    source = pick((*SOURCES, None))
    if source is None and pick((True, False)):
        words.append(pick(("ip", "ip6")))
    if proto:
        words.append(proto)
        if pick((True, False, True)):
            words += ["dport", pick(PORTS)]
        if pick((False, False, True)):
            words += ["sport", pick(PORTS)]
    if source:
        words += ["from", source]
    if chain == "input" and pick((False, False, True)):
        words += ["iif", pick(("eth0", "wg0", "veth*"))]
    if chain != "output" and pick((False, False, True)):
        words += ["ct", "state", pick(("new", "new,untracked"))]
    limit = pick((None, None, "per", "global", "named-global"))
    if limit == "per":
        mask = pick(("", "/24", "/24,/64"))
        words.append(f"limit over 10/second burst 20 per saddr{mask} name m{index}")
    elif limit == "global":
        words.append("limit 5/minute")
    elif limit == "named-global":
        words.append(f"limit over 1 mbytes/second name g{index}")
    if pick((False, False, True)):
        words.append(f'log prefix "r{index}: " level {pick(("info", "warn"))}')
    if pick((False, True)):
        words.append("counter")
    if pick((False, False, True)):
        words.append(f'comment "rule {index}"')
    return " ".join(words)


def _valid_policy(pick: Pick) -> dict[str, Any]:
    policy: dict[str, Any] = {"nfc": 1, "name": "generated", "define": DEFINES}
    entries = [entry for entry in NOTRACK if pick((True, False))]
    if entries or pick((True, False)):
        policy["conntrack"] = {"notrack": entries, "max": pick(("auto", 262144)), "timeouts": {"udp": 10}}
    index = 0
    for chain in ("input", "forward", "output"):
        if not pick((True, True, False)):
            continue
        rules = []
        for _ in range(pick(range(6))):
            index += 1
            rules.append(_valid_rule(pick, index, chain))
        section: dict[str, Any] = {"policy": pick(("drop", "accept")), "rules": rules}
        if pick((False, False, True)):
            section["state"] = "manual"
        policy[chain] = section
    return policy


@st.composite
def valid_policies(draw: st.DrawFn) -> dict[str, Any]:
    return _valid_policy(lambda options: draw(st.sampled_from(list(options))))


@settings(SETTINGS, max_examples=150)
@given(policy=valid_policies())
def test_valid_policy_compiles_deterministically(policy_dir: Path, policy: dict[str, Any]) -> None:
    path = _write(policy_dir, policy)
    first = _compile(path)
    _check_artifacts(first)
    assert _compile(path) == first
    for backend in BACKEND_NAMES[1:]:  # may refuse what it cannot express, the same way each time
        try:
            other = _compile(path, backend)
        except PolicyError as exc:
            _check_error(exc, path)
            with pytest.raises(PolicyError) as again:
                _compile(path, backend)
            assert again.value.render() == exc.render()
        else:
            _check_artifacts(other)
            assert _compile(path, backend) == other


_CHILD = f"""
import json, sys
from nfc.artifacts import build
from nfc.api import compile_policy
from nfc.errors import PolicyError
out = {{}}
for path in sys.argv[1:]:
    ruleset, sources = compile_policy(path, memory={MEMORY}, word_bits={WORD_BITS}, allow_empty=True)
    for backend in {BACKEND_NAMES!r}:
        try:
            out[path + " " + backend] = build(ruleset, backend, sources)
        except PolicyError as exc:
            out[path + " " + backend] = exc.render()
print(json.dumps(out, sort_keys=True))
"""


def test_output_does_not_depend_on_hash_seed(tmp_path: Path) -> None:
    """Set and dict order must not leak into the artifacts: the same policies
    compiled under two hash seeds, in fresh interpreters, give the same bytes."""
    paths = sorted(str(p) for p in (Path(__file__).parent.parent / "policies").glob("*.yaml"))
    for seed in range(40):
        rng = random.Random(seed)
        path = tmp_path / f"generated-{seed}.yaml"
        path.write_text(yaml.safe_dump(_valid_policy(rng.choice), sort_keys=False), encoding="utf-8")
        paths.append(str(path))
    outputs = []
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, *paths], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]
    assert {key.split(" ")[0] for key in outputs[0]} == set(paths)
