"""The live sets of nfc's table: the runtime sets of `sets:` (`nfc set
add|del|list`, and their elements carried across `nfc apply`) and the sets
of list files (`nfc refresh`).

A runtime set says what it is in its own declaration (`comment "nfc
runtime set NAME"`), so these commands need nothing but the table in force.
"""

from __future__ import annotations

import ipaddress
import json
import re

from nfc.backends.kernel import PERMISSION_HINT, ApplyError, Artifact, Json, permission_problem, run_tool
from nfc.backends.nft_netlink import change_elements
from nfc.errors import printable

RUNTIME_COMMENT = "nfc runtime set "
SET_BLOCK = re.compile(r"^\t(?P<kind>set|map) (?P<name>\S+) \{\n(?P<body>(?:\t\t.*\n)*?)\t\}\n", re.M)
"""A set or map of an nft text: nfc's ruleset.nft, or nft's listing."""
ELEMENTS = re.compile(r"^\t\telements = \{", re.M)
RUN_TIME = re.compile(r'^\t\t(?:flags .*\b(?:dynamic|timeout)\b|timeout |comment "nfc runtime set )', re.M)
"""The declaration of a set that the kernel fills: a meter, a runtime set."""
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
FAMILY_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
SUFFIX = {4: "v4", 6: "v6"}


def nft_json(*command: str) -> list[Json]:
    """`nft -j COMMAND`'s objects; ApplyError when nft fails."""
    try:
        done = run_tool(["nft", "-j", *command], check=False)  # stopped at the tools' timeout, dies with nfc
    except OSError as exc:
        raise ApplyError(f"cannot run nft: {exc.strerror}") from None
    if done.returncode != 0:
        error = done.stderr.strip() or "nft failed"
        hint = f"; {PERMISSION_HINT}" if permission_problem(error) else ""
        raise ApplyError(f"nft {' '.join(command)}: {printable(error.splitlines()[0], 200)}{hint}")
    try:
        objects = json.loads(done.stdout)["nftables"] if done.stdout.strip() else []
    except (ValueError, KeyError, TypeError) as exc:
        raise ApplyError(f"nft -j gave what is not its JSON listing: {exc}") from None
    return [o for o in objects if isinstance(o, dict)]


def filled_at_run_time(declared: Json) -> bool:
    """Whether a set of nfc's (as `nft -j` declares it) gets its elements in
    the kernel: a runtime set or a meter, not a set of the policy's."""
    comment = declared.get("comment")
    flags = declared.get("flags", [])
    return (
        (isinstance(comment, str) and comment.startswith(RUNTIME_COMMENT))
        or "timeout" in declared
        or (isinstance(flags, list) and ("dynamic" in flags or "timeout" in flags))
    )


def set_element_counts(listing: str) -> dict[str, int]:
    """The number of elements of each set or map an nft text declares, as
    nft lists them (`nfc stats` shows those of the policy's sets as nfc
    loaded them, rather than list a million elements back)."""
    counts = {}
    for block in SET_BLOCK.finditer(listing):
        found = ELEMENTS.search(block["body"])
        if found is None:
            counts[block["name"]] = 0
            continue
        elements = QUOTED.sub('""', block["body"][found.end() :])  # a comment may hold a comma
        inner = elements[: elements.rfind("}")]
        counts[block["name"]] = inner.count(",") + 1 if inner.strip(" \t\n,") else 0
    return counts


def set_object(table: str, name: str) -> Json:
    """One set of `table inet TABLE` with its elements, as `nft -j list set` gives it."""
    listed = nft_json("list", "set", "inet", table, name)
    for found in listed:
        if isinstance(found.get("set"), dict):
            return dict(found["set"])
    raise ApplyError(f"nft list set inet {table} {printable(name)} gave no set")


def runtime_sets(table: str) -> dict[str, dict[int, Json]]:
    """The runtime sets in force, with their elements, by the policy's name,
    each by IP version. The declarations come from `nft -t list sets inet`,
    the one listing that leaves every set's elements in the kernel (even
    `-t list table` fetches them): a list file's set of a million entries
    takes the kernel over a minute to dump."""
    found: dict[str, dict[int, Json]] = {}
    for declared in nft_json("-t", "list", "sets", "inet"):
        live = declared.get("set")
        if not isinstance(live, dict) or live.get("table") != table:
            continue
        comment = live.get("comment", "")
        if isinstance(comment, str) and comment.startswith(RUNTIME_COMMENT):
            version = 6 if live.get("type") == FAMILY_TYPES[6] else 4
            found.setdefault(comment[len(RUNTIME_COMMENT) :], {})[version] = set_object(table, live["name"])
    return found


def _element_text(element: Json, keep_timeout: bool) -> str | None:
    """An element of a JSON listing as `add element` takes it, with its
    timeout and the time it has left; None for what nfc does not carry."""
    value = element.get("elem", element) if isinstance(element, dict) else element
    if isinstance(value, dict):
        address = value.get("val")
        timeout, expires = value.get("timeout"), value.get("expires")
    else:
        address, timeout, expires = value, None, None
    if not isinstance(address, str):
        return None
    text = address
    if keep_timeout and isinstance(timeout, int):
        text += f" timeout {timeout}s"
    if keep_timeout and isinstance(expires, int):
        text += f" expires {max(expires, 1)}s"
    return text


def with_carried_elements(artifact: Artifact, ruleset: str) -> tuple[str, list[str]]:
    """`ruleset` (the artifact's text) with the elements of the runtime sets
    in force in the declarations of its sets that keep their name (and so
    their type), and a note for each set that goes with elements in it.
    In the declarations, not as `add element` commands: before any `add
    element`, nft 1.0.6 fetches every element of the interval sets of the
    table in force, minutes for a list file of a million."""
    wanted: dict[str, bool] = artifact.manifest.get("runtime_sets", {})
    notes: list[str] = []
    for by_version in runtime_sets(artifact.table).values():
        for live in by_version.values():
            name = live["name"]
            elements = live.get("elem", [])
            if not elements:
                continue
            if name not in wanted:
                notes.append(
                    f"set {name}: its {len(elements)} element(s) go with it (no longer in the policy)"
                )
                continue
            texts = [t for t in (_element_text(e, wanted[name]) for e in elements) if t is not None]
            declared = ruleset.find(f"\n\tset {name} {{\n")
            end = ruleset.find("\n\t}\n", declared) + 1  # its lines are indented further
            if texts and declared >= 0 and end > 0:
                added = f"\t\telements = {{ {', '.join(texts)} }}\n"
                ruleset = ruleset[:end] + added + ruleset[end:]
    return ruleset, notes


def parse_element(text: str) -> tuple[int, str]:
    """An element given to `nfc set add|del`: (IP version, address); ValueError if it is none."""
    if "/" in text:
        raise ValueError(f"'{printable(text)}' is a network: a runtime set holds addresses")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"'{printable(text)}' is not an IP address") from None
    return address.version, str(address)


def _declared(table: str, name: str) -> dict[int, Json]:
    found = runtime_sets(table)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ApplyError(
            f"no runtime set '{printable(name)}' in table inet {table} (its runtime sets: {known})"
        )
    return found[name]


def change(table: str, action: str, name: str, elements: list[str], timeout_ms: int | None) -> int:
    """`nfc set add|del`: one transaction over both families' sets; the
    number of elements. ApplyError for an unknown set or a bad element."""
    by_version = _declared(table, name)
    chosen: dict[int, list[str]] = {}
    for text in elements:
        try:
            version, address = parse_element(text)
        except ValueError as exc:
            raise ApplyError(str(exc)) from None
        if version not in by_version:
            raise ApplyError(f"set '{name}' has no IPv{version} set in force for {address}")
        chosen.setdefault(version, []).append(address)
    if timeout_ms is not None:
        if action != "add":
            raise ApplyError("--timeout goes with 'add' only")
        if any(
            "timeout" not in by_version[v].get("flags", []) and "timeout" not in by_version[v] for v in chosen
        ):
            raise ApplyError(
                f"set '{name}' has no timeout: give it 'timeout:' in the policy to use --timeout"
            )
    by_set = {str(by_version[v]["name"]): found for v, found in sorted(chosen.items())}
    change_elements(table, action == "add", by_set, timeout_ms)
    return len(elements)


def listing(table: str, name: str | None) -> list[str]:
    """`nfc set list`: a line per element, `SET ADDRESS [timeout T expires E]`."""
    found = runtime_sets(table)
    names = [name] if name is not None else sorted(found)
    if name is not None:
        _declared(table, name)
    lines = []
    for declared in names:
        for version in sorted(found[declared]):
            for element in found[declared][version].get("elem", []):
                text = _element_text(element, keep_timeout=True)
                if text is not None:
                    lines.append(f"{declared} {text}")
    return lines
