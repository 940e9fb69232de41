"""Define resolution: each `$name` resolved once, to addresses or to ports,
or to the interface names of an `interfaces` entry, with cycles, unknown
names, names used as what they are not and mixed lists refused at their
position."""

from __future__ import annotations

import re
from collections.abc import Iterable

from nfc.errors import Loc, PolicyError, did_you_mean, printable
from nfc.ir import Interfaces, Network
from nfc.listfile import read_address_list
from nfc.load import Define, InterfaceList
from nfc.schema import type_name
from nfc.values import (
    AddressValue,
    DefineValue,
    PortValue,
    check_port,
    collapse,
    merge_ranges,
    parse_network,
    port_number,
    port_range,
    service_port,
)
from nfc.yaml_source import YNode

PORT_RANGE = re.compile(r"([0-9]+)-([0-9]+)\Z")  # [0-9], not \d: that takes every script's digits
IPTABLES_RANGE = re.compile(r"[0-9]+:[0-9]+\Z")  # 1024:65535, which nft and nfc write 1024-65535
# How many defines deep one may name another: far more than a policy needs, far less than Python's stack
MAX_DEPTH = 64
SPACE = " \t\r\n"  # around a value; a space of another script is no more part of a number than its digits


class Defines:
    """Resolves `$name` references, each define once, with cycle detection."""

    def __init__(
        self, defines: dict[str, Define], interface_lists: dict[str, InterfaceList], sets: Iterable[str] = ()
    ) -> None:
        self.defines = defines
        self.interface_lists = interface_lists
        self.sets = frozenset(sets)
        self.resolved: dict[str, DefineValue] = {}
        self.resolving: list[str] = []

    def interfaces(self, name: str, use: Loc) -> Interfaces:
        """The interface names `$name` stands for in `iif`/`oif`."""
        found = self.interface_lists.get(name)
        if found is not None:
            return Interfaces(found.names, name)
        if name in self.defines or name in self.sets:
            value = self.value(name, use) if name in self.defines else AddressValue((), ())
            what = "addresses" if isinstance(value, AddressValue) else "ports"
            raise PolicyError(
                use,
                f"'${printable(name)}' holds {what}, not interface names",
                "name interfaces under 'interfaces:' (lan: [eth1, eth2]) and use them as 'iif $lan'",
            )
        lists = tuple(self.interface_lists)
        raise PolicyError(
            use,
            f"unknown name '${printable(name)}'",
            did_you_mean(name, lists) if lists else "add it under 'interfaces'",
        )

    def resolve_all(self) -> None:
        """Resolve every define, used or not, so that a mistake in one is
        reported even when no rule names it."""
        for name in sorted(self.defines):
            self.value(name, self.defines[name].loc)

    def value(self, name: str, use: Loc) -> DefineValue:
        if name in self.resolved:
            return self.resolved[name]
        if name in self.sets:
            raise PolicyError(
                use,
                f"'${printable(name)}' is a runtime set, filled at run time",
                f"use it alone, as 'from ${name}' or 'to ${name}'",
            )
        if name in self.interface_lists:
            raise PolicyError(
                use,
                f"'${printable(name)}' names interfaces, not addresses or ports",
                f"match them with 'iif ${name}' or 'oif ${name}'",
            )
        if name not in self.defines:
            raise PolicyError(
                use,
                f"unknown name '${printable(name)}'",
                did_you_mean(name, tuple(self.defines)) if self.defines else "add it under 'define'",
            )
        if name in self.resolving:
            cycle = " -> ".join(f"${n}" for n in [*self.resolving[self.resolving.index(name) :], name])
            raise PolicyError(use, f"define cycle: {cycle}")
        if len(self.resolving) >= MAX_DEPTH:
            raise PolicyError(
                use, f"defines name each other more than {MAX_DEPTH} deep, from ${self.resolving[0]}"
            )
        define = self.defines[name]
        if define.list_file is not None:
            self.resolved[name] = read_address_list(define.list_file, define.node.value["file"].loc)
            return self.resolved[name]
        self.resolving.append(name)
        node = define.node
        items = node.value if isinstance(node.value, list) else [node]
        if not items:
            raise PolicyError(node.loc, f"define '{name}' is an empty list")
        addresses: list[Network] = []
        ports: list[tuple[int, int]] = []
        for item in items:
            self._item(item, addresses, ports)
        if addresses and ports:
            raise PolicyError(node.loc, f"define '{name}' mixes addresses and ports")
        self.resolving.pop()
        value: DefineValue
        if addresses:
            value = AddressValue(
                collapse(n for n in addresses if n.version == 4),
                collapse(n for n in addresses if n.version == 6),
            )
        else:
            value = PortValue(merge_ranges(ports))
        self.resolved[name] = value
        return value

    def _item(self, item: YNode, addresses: list[Network], ports: list[tuple[int, int]]) -> None:
        raw = item.value
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise PolicyError(
                item.loc,
                "a define value must be an address, a port, a port range or a service name, "
                f"not {type_name(raw)}",
            )
        if isinstance(raw, int):
            ports.append((check_port(raw, item.loc),) * 2)
            return
        text = raw.strip(SPACE)
        if text.startswith("$"):
            value = self.value(text[1:], item.loc)
            if isinstance(value, AddressValue):
                addresses.extend(value.v4 + value.v6)
            else:
                ports.extend(value.ranges)
        elif match := PORT_RANGE.match(text):
            low, high = port_number(match[1], item.loc), port_number(match[2], item.loc)
            ports.append(port_range(low, high, item.loc))
        elif text.isascii() and text.isdigit():
            ports.append((port_number(text, item.loc),) * 2)
        elif IPTABLES_RANGE.match(text):
            raise PolicyError(
                item.loc, f"'{text}' is how iptables writes a port range", f"write {text.replace(':', '-')}"
            )
        elif ":" in text or "." in text:
            addresses.append(parse_network(text, item.loc))
        else:
            ports.append((service_port(text, item.loc),) * 2)
