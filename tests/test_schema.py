"""The JSON Schema of the policy format (nfc-policy.schema.json), which
editors with yaml-language-server validate and complete policies with.

Every policy of the repository passes it, and so do the examples of the
contract's everyday-host additions (interfaces, shared rules, NAT, list
files, runtime sets, counters); unknown keys and bad enum values at every
level fail it, as they fail nfc. Its keys and enums are the code's."""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nfc import api, load, runtime_sets, schema
from nfc.errors import PolicyError

from conftest import ROOT

SCHEMA_NAME = "nfc-policy.schema.json"
SCHEMA: dict[str, Any] = json.loads((ROOT / "compiler" / SCHEMA_NAME).read_text())
DEFINITIONS: dict[str, Any] = SCHEMA["definitions"]
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
# What the contract adds to the policy beside the keys nfc reads today
# (some are being implemented elsewhere right now).
EVERYDAY_KEYS = {"interfaces", "nat", "sets", "counters"}
POLICY_FILES = sorted([*(ROOT / "policies").glob("*.yaml"), *(ROOT / "tests" / "policies").glob("*.yaml")])


class EditorYaml(yaml.SafeLoader):
    """YAML as an editor's language server reads it (YAML 1.2): a date
    stays text, which the schema checks as YYYY-MM-DD."""


EditorYaml.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read(text: str) -> Any:
    return yaml.load(text, Loader=EditorYaml)  # a SafeLoader


def problems(document: Any) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(document)]


def nfc_refuses(tmp_path: Path, text: str) -> bool:
    policy = tmp_path / "p.yaml"
    policy.write_text(text)
    try:
        api.compile_policy(str(policy))
    except PolicyError:
        return True
    return False


def test_the_schema_is_a_draft_7_schema() -> None:
    """Draft 7: the newest that yaml-language-server supports."""
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_policy_of_the_repository_passes(path: Path) -> None:
    included = {
        (other.parent / name).resolve()
        for other in POLICY_FILES
        for name in load_includes(other)
    }
    if path.resolve() not in included:
        api.compile_policy(str(path))  # valid for nfc too: the schema is tested against real policies
    assert problems(read(path.read_text())) == []


def load_includes(path: Path) -> list[str]:
    """The files `path` includes: its `include` and its rule lists' `{include: FILE}` items."""
    policy = read(path.read_text()) or {}
    value = policy.get("include", [])
    names = [value] if isinstance(value, str) else list(value)
    sections = [policy] + [section for section in policy.values() if isinstance(section, dict)]
    for section in sections:
        rules = section.get("rules") or []
        names += [item["include"] for item in rules if isinstance(item, dict) and "include" in item]
    return names


def test_the_readme_policy_passes() -> None:
    blocks = re.findall(r"^```yaml\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S)
    assert blocks
    for block in blocks:
        assert problems(read(block)) == [], block


EVERYDAY = {
    "interfaces": """
nfc: 1
interfaces:
  lan: [eth1, br-lan]
  wan: eth0
  containers: "veth*"
input:
  policy: drop
  rules:
    - accept tcp dport 22 iif $lan
    - accept udp dport 53 iif {eth1, eth2}
""",
    "shared rules": """
nfc: 1
input:
  policy: drop
  rules:
    - {include: rules/common.yaml}
    - accept tcp dport 443
""",
    "a file of shared rules": """
define:
  admins: 192.0.2.10
interfaces:
  lan: eth1
rules:
  - accept tcp dport 22 from $admins iif $lan
""",
    "nat": """
nfc: 1
interfaces: {lan: eth1, wan: eth0}
nat:
  - masquerade oif $wan from 192.168.1.0/24
  - snat to 203.0.113.7 oif $wan from 10.0.0.0/8
  - dnat to 192.168.1.10:80 tcp dport 8080 iif $wan
  - dnat to [2001:db8::10]:443 tcp dport 443 iif $wan
  - {rule: redirect to 5353 udp dport 53 iif $lan, comment: local resolver}
forward:
  policy: drop
""",
    "lists and runtime sets": """
nfc: 1
counters: true
define:
  blocklist: {file: lists/drop.txt}
sets:
  banned: {type: address, timeout: 1h, size: 65536}
input:
  policy: drop
  rules:
    - drop from $blocklist
    - drop from $banned
""",
    "everything of section 2": """
nfc: 1
name: dns-resolver
table: nfc
include: [common.yaml]
define:
  internal: [10.0.0.0/8, 192.168.0.0/16, "fd00::/8"]
  admins: 192.0.2.10
  dns: 53
  web: [80, 443, 8000-8080]
conntrack:
  notrack:
    - udp dport 53
    - {rule: udp sport 53, scope: all, comment: backending, expires: 2027-03-01}
  max: auto
  timeouts: {udp: 10, udp_stream: 60}
input:
  policy: drop
  state: auto
  icmp: essential
  loopback: accept
  rules:
    - drop udp dport 53 limit over 10/second burst 20 per saddr name dns_too_frequent
    - {rule: "accept tcp dport $web", comment: "temporary", expires: 2027-03-01}
forward:
  policy: drop
  loopback: manual
output:
  policy: accept
  state: manual
""",
}


@pytest.mark.parametrize("name", EVERYDAY)
def test_the_contracts_policies_pass(name: str) -> None:
    assert problems(read(EVERYDAY[name])) == []


BASE = "nfc: 1\ninput:\n  policy: drop\n  rules:\n    - accept tcp dport 22\n"
# Each mistake, and whether nfc reads that part of the format today (then
# it must refuse it too: the schema and nfc agree).
WRONG = {
    "unknown top-level key": ("nfc: 1\ninptu: {policy: drop}\n", True),
    "unknown chain key": ("nfc: 1\ninput: {policy: drop, polcy: accept}\n", True),
    "unknown conntrack key": ("nfc: 1\nconntrack: {maximum: 5}\n" + BASE[7:], True),
    "unknown timeout": ("nfc: 1\nconntrack: {timeouts: {udp_steam: 60}}\n" + BASE[7:], True),
    "unknown rule key": ("nfc: 1\ninput:\n  policy: drop\n  rules:\n    - {rule: accept, coment: x}\n", True),
    "unknown notrack key": ("nfc: 1\nconntrack: {notrack: [{rule: udp, scop: all}]}\n" + BASE[7:], True),
    "scope on a rule": ("nfc: 1\ninput:\n  policy: drop\n  rules:\n    - {rule: accept, scope: all}\n", True),
    "included file with a chain": ("include: [x.yaml]\ndefine: {a: 1}\ninput: {policy: drop}\n", True),
    "bad policy": ("nfc: 1\ninput: {policy: dorp}\n", True),
    "bad state": ("nfc: 1\ninput: {policy: drop, state: automatic}\n", True),
    "bad icmp": ("nfc: 1\ninput: {policy: drop, icmp: all}\n", True),
    "bad loopback": ("nfc: 1\ninput: {policy: drop, loopback: allow}\n", True),
    "loopback accept in forward": ("nfc: 1\nforward: {policy: drop, loopback: accept}\n", True),
    "bad scope": ("nfc: 1\nconntrack: {notrack: [{rule: udp dport 53, scope: both}]}\n" + BASE[7:], True),
    "bad max": ("nfc: 1\nconntrack: {max: lots}\n" + BASE[7:], True),
    "bad version": ("nfc: 2\ninput: {policy: drop}\n", True),
    "chain without policy": ("nfc: 1\ninput: {rules: [accept]}\n", True),
    "bad define name": ("nfc: 1\ndefine: {1x: 53}\n" + BASE[7:], True),
    "bad rule verdict": ("nfc: 1\ninput:\n  policy: drop\n  rules:\n    - allow tcp dport 22\n", True),
    "bad expiry": ("nfc: 1\ninput:\n  policy: drop\n  rules:\n    - {rule: accept, expires: soon}\n", True),
    "unknown key in a rule include": ("nfc: 1\ninput: {policy: drop, rules: [{include: a, as: b}]}\n", False),
    "unknown key in a list file": ("nfc: 1\ndefine: {a: {file: x, format: csv}}\n" + BASE[7:], False),
    "bad interface name": ("nfc: 1\ninterfaces: {lan: eth0/1}\n" + BASE[7:], False),
    "bad nat kind": ("nfc: 1\nnat: [forward to 10.0.0.1 tcp dport 80]\n" + BASE[7:], False),
    "unknown nat key": ("nfc: 1\nnat: [{rule: masquerade, comment: x, when: always}]\n" + BASE[7:], False),
    "bad set type": ("nfc: 1\nsets: {banned: {type: adress}}\n" + BASE[7:], False),
    "unknown set key": ("nfc: 1\nsets: {banned: {type: address, timout: 1h}}\n" + BASE[7:], False),
    "bad counters": ("nfc: 1\ncounters: all\n" + BASE[7:], False),
    "a rules file with a chain": ("rules: [accept]\ninput: {policy: drop}\n", False),
}


@pytest.mark.parametrize("case", WRONG)
def test_unknown_keys_and_bad_values_fail(case: str, tmp_path: Path) -> None:
    text, nfc_reads_it = WRONG[case]
    assert problems(read(text)), f"the schema accepts: {case}"
    if nfc_reads_it:
        assert nfc_refuses(tmp_path, text), f"nfc accepts what the schema refuses: {case}"


def test_the_control_passes() -> None:
    """The base the mistakes are made in is itself valid."""
    assert problems(read(BASE)) == []
    assert problems(read("nfc: 1\nconntrack: {max: 262144}\n" + BASE[7:])) == []


def keys(definition: str) -> set[str]:
    return set(DEFINITIONS[definition]["properties"])


def enum(definition: str, key: str) -> list[str]:
    return list(DEFINITIONS[definition]["properties"][key]["enum"])


def test_the_schema_has_every_key_of_the_code() -> None:
    assert set(load.TOP_KEYS) <= keys("policy")
    assert keys("policy") - set(load.TOP_KEYS) <= EVERYDAY_KEYS
    assert set(load.INCLUDE_KEYS) == keys("includedFile")
    assert set(load.RULES_FILE_KEYS) == keys("rulesFile")
    assert set(load.SPLICE_KEYS) == keys("ruleInclude")
    assert set(load.INCLUDE_CONNTRACK_KEYS) == keys("includedConntrack")
    assert set(load.CONNTRACK_KEYS) == keys("conntrack")
    assert set(load.TIMEOUT_SYSCTLS) == set(DEFINITIONS["conntrack"]["properties"]["timeouts"]["properties"])
    assert set(load.RULE_KEYS) == keys("ruleMapping")
    notrack_mapping = DEFINITIONS["notrackEntry"]["anyOf"][1]
    assert set(load.ENTRY_KEYS) == set(notrack_mapping["properties"])
    for chain in ("inputChain", "forwardChain", "outputChain"):
        assert set(load.CHAIN_KEYS) == keys(chain)
    list_file = DEFINITIONS["defineValue"]["anyOf"][2]
    assert set(load.LIST_FILE_KEYS) == set(list_file["properties"]) == set(list_file["required"])
    a_set = DEFINITIONS["sets"]["additionalProperties"]
    assert set(runtime_sets.SET_KEYS) == set(a_set["properties"])
    assert a_set["properties"]["type"]["enum"] == list(runtime_sets.SET_TYPES)
    assert a_set["properties"]["size"]["maximum"] == runtime_sets.MAX_SET_SIZE


def test_the_schemas_enums_are_the_codes(tmp_path: Path) -> None:
    notrack_mapping = DEFINITIONS["notrackEntry"]["anyOf"][1]
    assert notrack_mapping["properties"]["scope"]["enum"] == list(schema.SCOPES)
    for chain in ("inputChain", "forwardChain", "outputChain"):
        assert enum(chain, "policy") == list(load.CHAIN_POLICIES)
        assert enum(chain, "state") == ["auto", "manual"]
        assert enum(chain, "icmp") == ["essential", "manual"]
    assert enum("inputChain", "loopback") == enum("outputChain", "loopback") == ["accept", "manual"]
    assert enum("forwardChain", "loopback") == ["manual"]
    # and nfc takes each value the schema offers
    for chain in ("input", "output"):
        for field, values in (("state", ["auto", "manual"]), ("icmp", ["essential", "manual"])):
            for value in values:
                text = f"nfc: 1\n{chain}: {{policy: drop, {field}: {value}}}\n"
                assert not nfc_refuses(tmp_path, text) and problems(read(text)) == [], text


def test_the_schema_ships_with_the_package() -> None:
    """Package data of nfc, so that a program can find it beside the code,
    and installed by make install where editors can point at it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert SCHEMA_NAME in pyproject["tool"]["setuptools"]["package-data"]["nfc"]
    shipped = importlib.resources.files("nfc").joinpath(SCHEMA_NAME)
    assert json.loads(shipped.read_text()) == SCHEMA
    installs = rf"compiler/{re.escape(SCHEMA_NAME)} .*\$\(SCHEMA_DIR\)/{SCHEMA_NAME}"
    assert re.search(installs, (ROOT / "Makefile").read_text())


def test_the_readme_shows_the_modeline() -> None:
    modeline = re.search(r"^# yaml-language-server: \$schema=(\S+)$", (ROOT / "README.md").read_text(), re.M)
    assert modeline, "the README should show the yaml-language-server modeline"
    assert modeline[1].endswith("/" + SCHEMA_NAME)
