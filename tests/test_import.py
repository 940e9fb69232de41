"""`nfc import` without the kernel: what the policy says, what the import
reports, bad input. test_netns_import.py proves the fixtures equivalent
with real packets."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import nfc.importer
from nfc import api, cli
from nfc.errors import PolicyError

from conftest import ROOT, run_nfc

FIXTURES = ROOT / "tests" / "fixtures" / "import"
SEEDS = sorted(FIXTURES.glob("seed-*.rules"))
ERROR = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): error: ", re.M)


def imported(name: str) -> api.Imported:
    return api.import_ruleset(str(FIXTURES / name))


def rules(policy: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in policy.splitlines() if line.startswith("    - ")]


@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.stem)
def test_each_seed_imports_exactly_and_lint_runs_on_it(
    seed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "imported.yaml"
    assert cli.main(["import", str(seed), "-o", str(policy)]) == 0
    err = capsys.readouterr().err
    assert "lint on the imported policy" in err
    # the written policy is what the library returns, and it compiles and lints as it is
    assert policy.read_text() == api.import_ruleset(str(seed)).policy
    assert cli.main(["lint", str(policy)]) in (0, 1)


def test_the_blanket_untracked_accept_is_replaced_by_the_untracked_answers() -> None:
    result = imported("seed-001-stateless-dns.rules")
    assert "state: auto" in result.policy
    assert not any("untracked" in rule for rule in rules(result.policy))
    fixes = [note for note in result.notes if note.startswith("fixes:")]
    assert fixes and "seed-001-stateless-dns.rules:26" in fixes[0]
    # the hashlimit it bypassed is a meter the untracked queries now meet
    assert "drop udp dport 53 limit over 10/second burst 20 per saddr name dns_too_frequen" in result.policy
    # the untracked answers are accepted by state: auto, for the sport entries
    compiled = api.compile_policy(_write(result.policy)).ruleset
    answers = [
        r for c in compiled.chains if c.name == "input" for r in c.rules if r.match.ct_state == ("untracked",)
    ]
    assert {r.match.sport for r in answers if r.match.sport} and all(r.match.dport is None for r in answers)


def test_a_state_rule_without_untracked_keeps_the_chain_manual() -> None:
    text = (
        (FIXTURES / "seed-000-isc.rules")
        .read_text()
        .replace("RELATED,ESTABLISHED,UNTRACKED", "RELATED,ESTABLISHED")
    )
    result = api.import_ruleset(_write(text, "seed.rules"))
    assert "state: auto" not in result.policy  # auto would accept untracked answers the input drops
    assert any(note.startswith("keeps:") for note in result.notes)
    assert any(f.code == "NFC020" for f in result.findings)  # lint names the answers the input drops


def test_seed_003_notrack_pairs_become_two_mirrored_entries_and_a_define() -> None:
    policy = imported("seed-003-web-notrack.rules").policy
    assert "ports_1: [80, 81, 82]" in policy
    assert "{rule: tcp dport $ports_1, scope: all}" in policy
    assert "{rule: tcp sport $ports_1, scope: all}" in policy
    assert (
        "accept ct state untracked" in policy
    )  # the forward chain's blanket accept is kept: no state rule there


def test_every_rule_names_its_input_lines() -> None:
    policy = imported("webserver.rules").policy
    lines = [line for line in policy.splitlines() if line.startswith("    - ")]
    assert lines and all(re.search(r"# \S+webserver\.rules:\d+", line) for line in lines)
    assert "'drop ip limit 5/minute burst 5 log prefix \"iptables denied: \" level debug'" in policy
    assert re.search(r"- drop  # \S+:19,32", policy)  # the DROP after the limited LOG, once for both families


def test_the_output_is_deterministic() -> None:
    first = [api.import_ruleset(str(p)).policy for p in sorted(FIXTURES.iterdir())]
    second = [api.import_ruleset(str(p)).policy for p in sorted(FIXTURES.iterdir())]
    assert first == second


@pytest.mark.parametrize("name", ["sets-server", "workstation", "router"])
def test_nft_json_imports_to_the_same_rules_as_the_text(name: str) -> None:
    text = imported(f"{name}.nft")
    json = imported(f"{name}.json")
    assert rules(json.policy) == rules(text.policy)
    assert len(json.problems) == len(text.problems)
    assert re.search(r"json:1:\d+", json.policy)  # one-line JSON: placed by column


def test_nft_json_items_are_placed_where_json_reads_them(tmp_path: Path) -> None:
    """The key 'nftables' written with an escape, after a string that holds
    its text: the rule is read, and placed, at its own column."""
    table = '{"table": {"family": "inet", "name": "f"}}'
    chain = '{"chain": {"family": "inet", "table": "f", "name": "input", "hook": "input", "prio": 0}}'
    rule = (
        '{"rule": {"family": "inet", "table": "f", "chain": "input", "expr": [{"match": {"op": "==", '
        '"left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"accept": null}]}}'
    )
    text = f'{{"decoy": "\\"nftables\\": [{{", "\\u006eftables": [{table}, {chain}, {rule}]}}'
    path = tmp_path / "escaped.json"
    path.write_text(text)
    policy = api.import_ruleset(str(path)).policy
    column = text.index('{"rule"') + 1
    assert f"escaped.json:1:{column}" in policy, policy


def test_sets_become_defines_and_concatenations_one_rule_per_element() -> None:
    policy = imported("sets-server.nft").policy
    assert "admins: [10.77.2.0/28, 192.0.2.10]" in policy
    assert (
        "accept tcp dport 5432 from 10.77.1.2" in policy and "accept tcp dport 6379 from 10.77.2.2" in policy
    )
    assert "drop ip limit over 50/second burst 100 per saddr name flood" in policy


def test_untranslatable_constructs_are_reported_and_the_policy_is_stricter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = str(FIXTURES / "untranslatable.rules")
    assert cli.main(["import", path]) == 1
    out, err = capsys.readouterr()
    reported = {int(m[1]) for m in re.finditer(r"untranslatable\.rules:(\d+):\d+: warning: ", err)}
    assert reported == {10, 23, 25, 26, 27, 28, 29, 30}
    assert "drop ip tcp dport 9000  #" in out  # a drop nfc cannot say exactly drops more
    assert "accept ip tcp dport 9002" not in out  # an accept it cannot say is left out
    assert "drop ip tcp dport 9004-9005" in out  # the jump into an un-inlinable chain drops
    assert "reject ip tcp dport 9007" in out


NAT_HEAD = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
NAT_HEAD += ":POSTROUTING ACCEPT [0:0]\n"
DNAT_8080 = "-A PREROUTING -i eth0 -p tcp --dport 8080 -j DNAT --to-destination 192.168.1.10:80\nCOMMIT\n"
FORWARD = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
FORWARD += "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"


def nat_rules(policy: str) -> list[str]:
    """The policy's `nat` list, without comments."""
    lines = policy.split("\nnat:\n", 1)[1].split("\n")
    return [line.split("  #")[0][4:] for line in lines if line.startswith("  - ")]


NAT_FORMS = [
    ("-A PREROUTING -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.168.1.10:80",
     "dnat to 192.168.1.10:80 tcp dport 8080 iif eth0"),
    ("-A PREROUTING -i eth0 -p tcp -m multiport --dports 25,587 -s 198.51.100.0/24 -j DNAT "
     "--to-destination 192.168.1.11",
     "dnat to 192.168.1.11 tcp dport {25, 587} from 198.51.100.0/24 iif eth0"),
    ("-A PREROUTING -i eth0 -p udp --dport 6000:6010 -j DNAT --to-destination 192.168.1.12:7000-7010",
     "dnat to 192.168.1.12:7000-7010 udp dport 6000-6010 iif eth0"),
    ("-A PREROUTING -i br+ -p udp -m udp --dport 53 -j REDIRECT --to-ports 5353",
     "redirect to 5353 ip udp dport 53 iif br*"),
    ("-A POSTROUTING -o eth0 -j MASQUERADE", "masquerade ip oif eth0"),
    ("-A POSTROUTING -s 10.0.0.0/8 -o ppp+ -p tcp --sport 1024:65535 -j SNAT "
     "--to-source 203.0.113.7:20000-29999",
     "snat to 203.0.113.7:20000-29999 tcp sport 1024-65535 from 10.0.0.0/8 oif ppp*"),
    ("-A POSTROUTING -d 198.51.100.9 -o eth0 -j SNAT --to-source 203.0.113.8",
     "snat to 203.0.113.8 to 198.51.100.9 oif eth0"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "rule"), NAT_FORMS, ids=[r for _, r in NAT_FORMS])
def test_each_iptables_nat_form_becomes_its_nat_rule(tmp_path: Path, line: str, rule: str) -> None:
    result = api.import_ruleset(_write(NAT_HEAD + line + "\nCOMMIT\n", "nat.rules", tmp_path))
    assert nat_rules(result.policy) == [rule]
    assert result.problems == []
    assert "nat.rules:6" in result.policy  # the rule names its input line


NFT_NAT = """\
table inet nat {
\tchain pre {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname "eth0" tcp dport 8080 dnat ip to 192.168.1.10:80
\t\tiifname "eth0" tcp dport 443 dnat ip6 to [2001:db8::10]:443
\t\tiifname { "eth1", "br-*" } udp dport 53 redirect to :5353
\t}
\tchain post {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "eth0" ip saddr 192.168.1.20 snat ip to 203.0.113.7
\t\toifname "eth0" masquerade
\t}
}
table ip6 nat6 {
\tchain pre {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tiifname "eth0" tcp dport 8443 dnat to [2001:db8::11]:443
\t}
}
"""


def test_nft_nat_statements_of_inet_and_family_tables(tmp_path: Path) -> None:
    result = api.import_ruleset(_write(NFT_NAT, "nat.nft", tmp_path))
    assert nat_rules(result.policy) == [
        "dnat to 192.168.1.10:80 tcp dport 8080 iif eth0",
        "dnat to [2001:db8::10]:443 tcp dport 443 iif eth0",
        "redirect to 5353 udp dport 53 iif {eth1, br-*}",  # one rule for both families of the inet table
        "dnat to [2001:db8::11]:443 tcp dport 8443 iif eth0",
        "snat to 203.0.113.7 from 192.168.1.20 oif eth0",
        "masquerade oif eth0",
    ]
    assert result.problems == []


REFUSED_NAT = [
    ("-A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 192.168.1.10 --to-destination 192.168.1.11",
     "2 --to-destination"),
    ("-A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 192.168.1.10-192.168.1.12",
     "192.168.1.10-192.168.1.12"),
    ("-A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 192.168.1.10 --random", "--random"),
    ("-A PREROUTING -d 10.0.0.0/8 -j NETMAP --to 192.168.0.0/8", "NETMAP"),
    ("-A PREROUTING -p tcp --dport 80 -j REDIRECT", "without --to-ports"),
    ("-A PREROUTING -p tcp --dport 80 -m addrtype --dst-type LOCAL -j DNAT --to-destination 192.168.1.10",
     "addrtype"),
    ("-A OUTPUT -p tcp --dport 80 -j DNAT --to-destination 192.168.1.10:3128", "output chain"),
    ("-A INPUT -p tcp --dport 80 -j SNAT --to-source 192.168.1.1", "input chain"),
    ("-A POSTROUTING -o eth0 -j MASQUERADE --random", "--random"),
    ("-A POSTROUTING -o eth0 -j MASQUERADE --to-ports 1024-2000", "--to-ports"),
    ("-A POSTROUTING -o eth0 -j SNAT --to-source 203.0.113.7 --persistent", "--persistent"),
    ("-A POSTROUTING -o eth0 -p tcp -m string --string x --algo bm -j MASQUERADE", "-m string"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "what"), REFUSED_NAT, ids=[w for _, w in REFUSED_NAT])
def test_a_nat_rule_nfc_cannot_say_is_reported_and_its_new_connections_dropped(
    tmp_path: Path, line: str, what: str
) -> None:
    path = _write(NAT_HEAD + line + "\nCOMMIT\n" + FORWARD + "COMMIT\n", "nat.rules", tmp_path)
    result = api.import_ruleset(path)
    assert [p.loc.line for p in result.problems] == [6] and what in result.problems[0].message
    assert nat_rules(result.policy + "\nnat:\n") == []  # no translation nfc cannot say exactly
    assert "# left out " in result.policy
    drops = [r for r in rules(result.policy) if r.startswith("- drop") and "ct state new" in r]
    hook = line.split()[1]
    feeds = {"PREROUTING": 2, "POSTROUTING": 2, "OUTPUT": 1, "INPUT": 1}[hook]
    assert len(drops) == feeds  # in each filter chain after the hook, before every accept
    assert cli.main(["import", path]) == 1


def test_a_later_nat_rule_that_may_take_the_same_connections_is_left_out_too(tmp_path: Path) -> None:
    save = NAT_HEAD + (
        "-A POSTROUTING -d 192.168.0.0/16 -j RETURN\n"  # an exception nfc cannot say
        "-A POSTROUTING -o eth0 -j MASQUERADE\n"  # would translate what the RETURN exempts
        "-A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination 192.168.1.10 --random\n"
        "-A PREROUTING -p udp --dport 8080 -j DNAT --to-destination 192.168.1.11\n"  # disjoint: kept
        "-A PREROUTING -p tcp --dport 8000:8090 -j DNAT --to-destination 192.168.1.12\n"  # overlaps
        "COMMIT\n"
    )
    result = api.import_ruleset(_write(save, "nat.rules", tmp_path))
    assert nat_rules(result.policy) == ["dnat to 192.168.1.11 udp dport 8080"]
    assert sorted(p.loc.line for p in result.problems) == [6, 7, 8, 10]
    # the RETURN's connections pass untranslated in both: no drop for it
    assert not any("192.168.0.0/16" in r for r in rules(result.policy))


def test_a_nat_chain_that_drops_is_refused(tmp_path: Path) -> None:
    save = NAT_HEAD.replace(":PREROUTING ACCEPT", ":PREROUTING DROP") + "COMMIT\n"
    result = run_nfc("import", _write(save, "nat.rules", tmp_path))
    assert result.returncode == 2
    assert "nat.rules:2:1: error: the nat chain PREROUTING has policy DROP" in result.stderr


# an IPv6 filter table with the same state rule: the forward chain is one for both families
SIX = FORWARD + "COMMIT\n"


def test_an_explicit_forward_accept_of_the_dnat_keeps_state_auto(tmp_path: Path) -> None:
    nat = NAT_HEAD + DNAT_8080
    for accept in ("-d 192.168.1.10/32 -p tcp -m tcp --dport 80", "-m conntrack --ctstate DNAT"):
        save = nat + FORWARD + f"-A FORWARD {accept} -j ACCEPT\nCOMMIT\n" + SIX
        result = api.import_ruleset(_write(save, "nat.rules", tmp_path))
        assert "forward:\n  policy: drop\n  state: auto" in result.policy
        kept = "accept tcp dport 80 to 192.168.1.10" if "-d" in accept else "accept ip ct status dnat"
        assert kept in rules(result.policy)[0]  # the user's rule stays as it was
        assert result.problems == []


def test_state_auto_would_accept_the_dnat_the_forward_chain_drops_so_it_stays_manual(tmp_path: Path) -> None:
    nat = NAT_HEAD + DNAT_8080
    save = nat + FORWARD + "-A FORWARD -d 192.168.1.10/32 -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n" + SIX
    result = api.import_ruleset(_write(save, "nat.rules", tmp_path))
    assert "forward:\n  policy: drop\n  state: manual" in result.policy
    assert rules(result.policy)[0] == "- accept ct state established,related"
    assert any("stays 'state: manual'" in note for note in result.notes)
    compiled = api.compile_policy(_write(result.policy)).ruleset
    forward = next(c for c in compiled.chains if c.name == "forward")
    assert not any(r.match.ct_status for r in forward.rules)  # no dnat forward accept


REVERSED = "table inet f {\n\tchain input {\n\t\ttype filter hook input priority 0;\n"
REVERSED += "\t\ttcp dport 910-10 accept\n\t}\n}\n"
BAD = [
    ("truncated.rules", "*filter\n:INPUT DROP [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\n", 3, "no COMMIT"),
    ("table.rules", "*filtre\n:INPUT DROP [0:0]\nCOMMIT\n", 1, "unknown table 'filtre'"),
    ("garbage.rules", "*filter\n:INPUT DROP [0:0]\nhello world\nCOMMIT\n", 3, "not iptables-save output"),
    (
        "option.rules",
        "*filter\n:INPUT DROP [0:0]\n-A INPUT --dport-typo 22 -j ACCEPT\nCOMMIT\n",
        3,
        "unknown option",
    ),
    ("chain.rules", "*filter\n:INPUT DROP [0:0]\n-A NOPE -j ACCEPT\nCOMMIT\n", 3, "has not declared"),
    (
        "truncated.nft",
        "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0;\n",
        2,
        "never closed",
    ),
    ("family.nft", "table foo bar {\n}\n", 1, "unknown table family"),
    ("broken.json", '{"nftables": [{"table": {"family": "inet"', 1, "not JSON"),
    ("digits.json", '{"nftables": [\n{"table": {"handle": ' + "1" * 5000 + "}}]}", 2, "4300 digits"),
    ("deep.json", '{"nftables":\n[' + "[" * 100 + "]" * 101 + "}", 2, "nested deeper than 64 levels"),
    ("deeper.json", '{"nftables":\n[' + "[" * 5000 + "]" * 5001 + "}", 2, "nested deeper than 64 levels"),
    ("no-key.json", '{"nftables": [{}]}', 1, "an item of 'nftables' that is not one key"),
    ("nothing.txt", "hello\n", 1, "neither iptables-save output nor an nft ruleset"),
    # a value nfc refuses is placed on the input line the policy line names
    ("reversed.nft", REVERSED, 4, "port range 910-10 is reversed"),
]


@pytest.mark.parametrize(("name", "text", "line", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_error_at_its_place(
    tmp_path: Path, name: str, text: str, line: int, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    result = run_nfc("import", str(path), "-o", str(tmp_path / "out.yaml"))
    assert result.returncode == 2, result.stderr
    match = ERROR.match(result.stderr)
    assert match and match["file"] == str(path) and int(match["line"]) == line, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "out.yaml").exists()


def test_the_input_is_read_bounded_and_its_bytes_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dev/zero was read until memory ran out (exit 70); a byte that is not
    UTF-8 was an error at 1:1 with Python's words."""
    monkeypatch.setattr(nfc.importer, "MAX_RULESET_BYTES", 4096)
    with pytest.raises(PolicyError, match="ruleset /dev/zero is larger than 4096 bytes"):
        api.import_ruleset("/dev/zero")
    path = tmp_path / "latin1.rules"
    path.write_bytes(b"*filter\n-A INPUT -m comment --comment caf\xe9 -j ACCEPT\nCOMMIT\n")
    with pytest.raises(PolicyError) as error:
        api.import_ruleset(str(path))
    assert error.value.render().startswith(f"{path}:2:34: error: ruleset is not valid UTF-8 text")


def test_the_output_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    """The policy was written to '.NAME.PID.tmp' beside the output, through
    whatever link was there: root's import into /tmp wrote where a link planted
    at its (guessable) name pointed."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    output = tmp_path / "out.yaml"
    planted = f".out.yaml.{os.getpid()}.tmp"
    (tmp_path / planted).symlink_to(victim)
    imported = api.import_ruleset(str(FIXTURES / "webserver.rules"), output=str(output))
    assert output.read_text() == imported.policy
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [planted, "out.yaml", "victim"]


def test_a_missing_file_is_an_error() -> None:
    with pytest.raises(PolicyError):
        api.import_ruleset("/nonexistent/rules.v4")


def _write(text: str, name: str = "p.yaml", directory: Path | None = None) -> str:
    import tempfile

    folder = directory or Path(tempfile.mkdtemp(prefix="nfc-test-import-"))
    path = folder / name
    path.write_text(text)
    return str(path)


def test_lint_on_the_input_as_it_was_names_what_the_import_fixes() -> None:
    result = imported("seed-001-stateless-dns.rules")
    assert any(f.startswith("NFC012 ") and "stateless-dns.rules:26,60" in f for f in result.fixed)
    assert not any(f.code == "NFC012" for f in result.findings)
    assert any(f.code == "NFC031" for f in result.findings)  # the redundant output accepts: kept


VMAP = """\
table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tct state vmap { invalid : drop, established : accept, related : accept }
\t\ttcp dport 22 accept
\t\ttcp dport 25 meta mark set 0x1 accept
\t\tmeta l4proto udp vmap { 53 : jump dns }
\t}
\tchain raw {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tudp dport 53 fib daddr type local notrack
\t}
\tchain raw_out {
\t\ttype filter hook output priority raw; policy accept;
\t\tudp sport 53 notrack
\t}
}
"""


def test_verdict_maps_are_rules_or_drops_and_a_local_notrack_is_scope_host(tmp_path: Path) -> None:
    result = api.import_ruleset(_write(VMAP, "vmap.nft", tmp_path))
    policy = rules(result.policy)
    assert policy[1:3] == ["- drop ct state invalid", "- accept ct state established,related"]
    assert "- drop udp" in policy  # a map of verdicts nfc cannot follow drops what it matches
    assert not any("dport 25" in rule for rule in policy)  # the accept with a mark is left out
    assert "{rule: udp dport 53, scope: host}" in result.policy
    assert sorted(p.loc.line for p in result.problems) == [6, 7]


def test_nothing_moves_before_a_drop_it_could_let_through(tmp_path: Path) -> None:
    save = (
        "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A INPUT -m conntrack --ctstate INVALID -j DROP\n"
        "-A INPUT -i lo -j ACCEPT\n"
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
        "-A INPUT -s 192.0.2.0/24 -j DROP\n"
        "-A INPUT -i lo -j ACCEPT\n"
        "COMMIT\n"
    )
    policy = api.import_ruleset(_write(save, "order.rules", tmp_path)).policy
    # loopback: accept would come before the invalid drop; lo stays a rule
    assert "loopback: manual" in policy and "accept ip iif lo" in policy
    assert rules(policy)[:2] == ["- drop ip ct state invalid", "- accept ip iif lo"]
