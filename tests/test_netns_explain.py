"""`nfc explain` is nfc's executable semantics: for each flagship policy,
a few hundred seeded-random packets are sent through a server namespace
running the generated ruleset, and the kernel's verdict must be explain's."""

from __future__ import annotations

from pathlib import Path

import pytest
from campaign import TCP_PORTS, UDP_PORTS, observed, random_probes

from nfc.api import compile_policy
from nfc.explain import explain, parse_packet

from conftest import FLAGSHIP
from lab import Lab

PACKETS = 240


@pytest.mark.parametrize("policy", FLAGSHIP, ids=lambda p: p.stem)
def test_explain_agrees_with_the_kernel(lab: Lab, policy: Path) -> None:
    ruleset, _ = compile_policy(str(policy))
    result = lab.apply(policy)
    assert result.returncode == 0, result.stderr
    lab.start_servers(udp=UDP_PORTS, tcp=TCP_PORTS)
    probes = sorted(random_probes(seed=sum(map(ord, policy.stem)), count=PACKETS), key=lambda p: p[0])
    predicted = [explain(ruleset, parse_packet(text)).verdict for _, _, text in probes]
    seen = set(predicted)
    kernels = observed(lab, probes, predicted)
    disagreements = [
        f"{text}: explain says {expected}, the kernel {kernel}"
        for (_, _, text), expected, kernel in zip(probes, predicted, kernels, strict=True)
        if expected != kernel
    ]
    assert disagreements == []
    assert {"accept", "drop"} <= seen  # the sample exercises both outcomes
