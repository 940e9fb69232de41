"""The nfc rule grammar: rules.lark, and the terminals it shares with the
hand-written fast path (compiler/fastparse.py).

The terminals are written once, here. `lark_terminals()` gives them to lark
in its own syntax, appended to rules.lark; fastparse compiles its token
patterns from the same tables, so the two parsers cannot drift apart."""

# Terminals that are one of a few words.
WORDS: dict[str, tuple[str, ...]] = {
    "TIME_UNIT": ("second", "minute", "hour", "day"),
    "BYTE_UNIT": ("bytes", "kbytes", "mbytes"),
    "BURST_UNIT": ("packets", "bytes", "kbytes", "mbytes"),
    "PER_KEY": ("saddr", "daddr"),
    "LOG_LEVEL": ("emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"),
}

# Terminals that are a regular expression, in Python's syntax (lark hands
# them to `re` as they are).
PATTERNS: dict[str, str] = {
    "INT": r"[0-9]+",
    "NAME": r"[A-Za-z][A-Za-z0-9_-]*",
    "VAR": r"\$[A-Za-z_][A-Za-z0-9_]*",
    # An address literal always holds a '.' or a ':' (IPv4, IPv6, prefixes);
    # whether it is a valid address is checked after parsing.
    "ADDRESS": r"[0-9A-Fa-f]*[.:][0-9A-Fa-f.:]*(/[0-9]+)?",
    # The new address of snat and dnat, with an optional port or port range;
    # an IPv6 address with a port goes in brackets, as nft writes it.
    "NAT_ADDRESS": r"\[[0-9A-Fa-f:.]*\](:[0-9]+(-[0-9]+)?)?|[0-9A-Fa-f]*[.:][0-9A-Fa-f.:]*(-[0-9]+)?",
    "IFNAME": r"[A-Za-z0-9_.:@+-]+\*?",
    "STRING": r'"[^"\n]*"',
}

# Lexer priorities where two patterns match the same text: "10.0.0.1" is
# an ADDRESS before it is an IFNAME.
PRIORITIES = {"ADDRESS": 2}


def lark_terminals() -> str:
    """The terminal definitions in lark's grammar syntax."""
    lines = [f"{name}: " + " | ".join(f'"{word}"' for word in words) for name, words in WORDS.items()]
    for name, pattern in PATTERNS.items():
        priority = f".{PRIORITIES[name]}" if name in PRIORITIES else ""
        slashed = pattern.replace("/", "\\/")  # lark's regex literals are /.../
        lines.append(f"{name}{priority}: /{slashed}/")
    return "\n".join(lines) + "\n"
