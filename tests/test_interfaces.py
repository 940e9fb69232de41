"""Interface lists (contract 7.3): the `interfaces` section, `iif $lan`,
literal lists `iif {a, b}`, wildcards, and `ct status`, up to the IR."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfc.errors import PolicyError
from nfc.ir import Interfaces, RuleRole
from nfc.load import load_policy

from helpers import ruleset_of, write_policy

HEAD = "nfc: 1\ninterfaces:\n  lan: [eth1, br-lan]\n  wan: eth0\n  containers: 'veth*'\n"


def user_matches(tmp_path: Path, *rules: str, chain: str = "forward", head: str = HEAD):
    body = "".join(f"    - {rule!r}\n" for rule in rules)
    ruleset = ruleset_of(tmp_path, f"{head}{chain}:\n  policy: drop\n  rules:\n{body}")
    (found,) = (c for c in ruleset.chains if c.name == chain)
    return [r.match for r in found.rules if r.role is RuleRole.USER]


def test_a_named_list_is_used_as_iif_and_oif(tmp_path: Path) -> None:
    (match,) = user_matches(tmp_path, "accept iif $lan oif $wan")
    assert match.iifname == Interfaces(("eth1", "br-lan"), "lan")
    assert match.oifname == Interfaces(("eth0",), "wan")


def test_literal_lists_mix_names_wildcards_and_lists(tmp_path: Path) -> None:
    first, second, third = user_matches(
        tmp_path,
        "accept iif {eth2, eth3}",
        'accept iif { $containers, "wg0", eth1, $lan, }',
        "accept iif {$lan}",
    )
    assert first.iifname == Interfaces(("eth2", "eth3"))
    # merged in the order written, each name once, no set name: the list is not one entry's
    assert second.iifname == Interfaces(("veth*", "wg0", "eth1", "br-lan"))
    assert third.iifname == Interfaces(("eth1", "br-lan"), "lan")


def test_a_single_name_stays_as_it_was(tmp_path: Path) -> None:
    (match,) = user_matches(tmp_path, "accept iif eth0", chain="input")
    assert match.iifname == Interfaces(("eth0",))


def test_the_wildcard_admits_the_prefix(tmp_path: Path) -> None:
    (match,) = user_matches(tmp_path, "accept iif $containers")
    assert match.iifname is not None
    assert match.iifname.admits("veth12ab") and not match.iifname.admits("eth0")


def test_notrack_entries_take_lists_and_mirror_them(tmp_path: Path) -> None:
    ruleset = ruleset_of(tmp_path, HEAD + "conntrack:\n  notrack:\n    - udp dport 53 iif {$lan, eth9}\n")
    pre, out = ruleset.notrack
    names = Interfaces(("eth1", "br-lan", "eth9"))
    assert (pre.match.iifname, pre.match.oifname) == (names, None)
    assert (out.match.iifname, out.match.oifname) == (None, names)


def test_an_included_file_may_hold_interfaces(tmp_path: Path) -> None:
    write_policy(tmp_path, "interfaces:\n  uplink: [eth0, eth1]\n", "site.yaml")
    (match,) = user_matches(tmp_path, "accept oif $uplink", head="nfc: 1\ninclude: [site.yaml]\n")
    assert match.oifname == Interfaces(("eth0", "eth1"), "uplink")


def test_ct_status_is_a_match(tmp_path: Path) -> None:
    (match,) = user_matches(tmp_path, "accept oif docker0 ct status dnat")
    assert match.ct_status == ("dnat",)
    (both,) = user_matches(tmp_path, "accept ct status snat,dnat,snat")
    assert both.ct_status == ("snat", "dnat")


def error_of(tmp_path: Path, text: str) -> PolicyError:
    path = write_policy(tmp_path, text)
    with pytest.raises(PolicyError) as raised:
        ruleset_of(tmp_path, path.read_text())
    return raised.value


@pytest.mark.parametrize(
    ("text", "where", "message", "hint"),
    [
        (
            "nfc: 1\ndefine:\n  lan: 10.0.0.0/8\ninterfaces:\n  lan: eth0\n",
            (5, 3),
            "'lan' is defined under 'interfaces' here and under 'define' at {path}:3:3",
            "a name is defined once across 'define' and 'interfaces'",
        ),
        (
            HEAD + "define:\n  wan: 192.0.2.1\n",
            (4, 3),
            "'wan' is defined under 'interfaces' here and under 'define' at {path}:7:3",
            None,
        ),
        (
            "nfc: 1\ndefine:\n  wan: 192.0.2.1\ninput:\n  policy: drop\n  rules:\n    - accept iif $wan\n",
            (7, 18),
            "'$wan' holds addresses, not interface names",
            "name interfaces under 'interfaces:'",
        ),
        (
            HEAD + "input:\n  policy: drop\n  rules:\n    - accept from $lan\n",
            (9, 19),
            "'$lan' names interfaces, not addresses or ports",
            "match them with 'iif $lan' or 'oif $lan'",
        ),
        (
            HEAD + "input:\n  policy: drop\n  rules:\n    - accept iif {eth0, $lna}\n",
            (9, 25),
            "unknown name '$lna'",
            "did you mean 'lan'?",
        ),
        (
            "nfc: 1\ninterfaces:\n  lan: [eth0, 'e*h']\n",
            (3, 15),
            "'e*h' is not a valid interface name",
            "a '*' is a wildcard at the end of an interface name only",
        ),
        ("nfc: 1\ninterfaces:\n  lan: '*'\n", (3, 8), "'*' is not a valid interface name", "'*' alone"),
        ("nfc: 1\ninterfaces:\n  lan: []\n", (3, 8), "interface list 'lan' is empty", None),
        ("nfc: 1\ninterfaces:\n  lan: [eth0, 5]\n", (3, 15), "an interface name must be a string", None),
        ("nfc: 1\ninterfaces:\n  lan: [$wan]\n", (3, 9), "an interface list holds interface names", None),
        (
            "nfc: 1\ninterfaces:\n  9lan: eth0\n",
            (3, 3),
            "interface list name '9lan' is not a valid name",
            None,
        ),
        (
            "nfc: 1\nconntrack:\n  notrack:\n    - udp ct status dnat\n",
            (4, 11),
            "a notrack entry cannot match 'ct status'",
            None,
        ),
        (
            "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept ct status new\n",
            (5, 24),
            "unknown connection status 'new'",
            None,
        ),
    ],
)
def test_mistakes_are_placed_and_explained(
    tmp_path: Path, text: str, where: tuple[int, int], message: str, hint: str | None
) -> None:
    error = error_of(tmp_path, text)
    path = str(tmp_path / "policy.yaml")
    assert (error.loc.file, error.loc.line, error.loc.col) == (path, *where)
    assert error.message.startswith(message.format(path=path))
    if hint is not None:
        assert error.hint is not None and hint in error.hint


def test_an_interface_list_clash_across_includes_names_both_files(tmp_path: Path) -> None:
    write_policy(tmp_path, "interfaces:\n  lan: eth1\n", "site.yaml")
    path = write_policy(tmp_path, "nfc: 1\ninclude: site.yaml\ninterfaces:\n  lan: eth2\n")
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert (raised.value.loc.file, raised.value.loc.line) == (str(path), 4)
    assert f"{tmp_path / 'site.yaml'}:2:3" in raised.value.message


def test_the_same_list_from_two_places_is_no_clash(tmp_path: Path) -> None:
    write_policy(tmp_path, "interfaces:\n  lan: [eth1]\n", "site.yaml")
    path = write_policy(tmp_path, "nfc: 1\ninclude: site.yaml\ninterfaces:\n  lan: [eth1]\n")
    assert load_policy(path).interfaces["lan"].names == ("eth1",)
