"""What a host loads at boot, on a real kernel in namespaces of its own:
`nfc restore` with nothing to restore, and iptables-persistent's files
written by `--persist` (that iptables-legacy-restore, as
netfilter-persistent runs it at boot, loads into a fresh namespace as the
very ruleset nfc applied). Restoring the last confirmed ruleset after a
reboot, and after a kill in the middle of an apply, is proven in
test_netns_journal."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import test_netns_journal as journal
from test_netns_journal import MID, NEW, OLD, Host

from nfc.backends.iptables import BACKEND as LEGACY
from nfc.backends.iptables import TOOLS
from nfc.backends.iptables_kernel import with_owned_tables
from nfc.backends.nft import BACKEND as NFT
from nfc.persist import MODE

Artifacts = dict[tuple[str, Path], Path]
# the hosts (namespaces deleted whatever happens) and artifacts of the journal tests
make_host, host, artifacts = journal.make_host, journal.host, journal.artifacts


def nothing_loaded(host: Host) -> bool:
    return host.rules(NFT).strip() == "" and host.rules(LEGACY).strip() == ""


@pytest.mark.parametrize("state_dir", ["missing", "empty"])
def test_restore_with_an_empty_state_directory_fails_and_loads_nothing(host: Host, state_dir: str) -> None:
    if state_dir == "empty":
        host.state_dir.mkdir(mode=0o700)
    done = host.nfc("restore")
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"nfc: error: nothing to restore: no confirmed ruleset in {host.state_dir}\n"
    assert nothing_loaded(host)


def persisted(directory: Path) -> dict[str, str]:
    return {name: (directory / name).read_text() for name in TOOLS if (directory / name).exists()}


def test_persist_writes_what_netfilter_persistent_loads_at_boot(
    make_host: Callable[[], Host], artifacts: Artifacts, tmp_path: Path
) -> None:
    host, booted = make_host(), make_host()
    etc = tmp_path / "etc" / "iptables"
    host.apply(artifacts[LEGACY, OLD])
    assert not etc.exists(), "written without --persist"
    done = host.nfc("apply", str(artifacts[LEGACY, NEW]), "--persist", "--persist-dir", str(etc))
    assert done.returncode == 0, done.stderr
    assert f"persisted for iptables-persistent: {etc}/rules.v4, {etc}/rules.v6" in done.stdout
    files = persisted(etc)
    # as nfc loads them: with an empty nat table when the policy has no NAT
    assert files == {name: with_owned_tables((artifacts[LEGACY, NEW] / name).read_text()) for name in TOOLS}
    for name in TOOLS:
        assert stat.S_IMODE((etc / name).stat().st_mode) == MODE & ~current_umask()
    assert sorted(os.listdir(etc)) == sorted(TOOLS), "a temporary file was left behind"
    # netfilter-persistent's boot: each file into iptables-legacy-restore
    for name, tool in TOOLS.items():
        booted.ns.run(f"{tool}-restore", str(etc / name))
    assert booted.rules(LEGACY) == host.rules(LEGACY)


def test_an_apply_whose_report_meets_a_full_disk_still_persists_what_it_loaded(
    host: Host, artifacts: Artifacts, tmp_path: Path
) -> None:
    """`nfc apply --persist > /dev/full`: the line 'applied ...' failed with
    ENOSPC after the load and stopped the apply there (exit 70), before it
    persisted the ruleset and mapped its rules for `nfc stats`."""
    etc = tmp_path / "iptables"
    command = ["sh", "-c", 'exec "$@" > /dev/full', "sh", sys.executable, "-m", "nfc", "apply"]
    done = host.ns.run(
        *command, str(artifacts[LEGACY, NEW]), "--persist", "--persist-dir", str(etc),
        "--state-dir", str(host.state_dir), check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == "nfc: error: cannot write standard output: No space left on device\n"
    # in force, persisted and mapped as by an apply whose report was read
    assert persisted(etc) == {
        name: with_owned_tables((artifacts[LEGACY, NEW] / name).read_text()) for name in TOOLS
    }
    stats = host.nfc("stats")
    assert stats.returncode == 0 and "web-notrack.yaml:" in stats.stdout, stats.stderr
    assert "web-notrack.yaml:" in host.rules(LEGACY)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_persist_waits_for_the_confirmation(host: Host, artifacts: Artifacts, tmp_path: Path) -> None:
    etc = tmp_path / "iptables"
    host.ns.env["NFC_PERSIST_DIR"] = str(etc)  # the environment names the directory too
    host.apply(artifacts[LEGACY, OLD], "--persist")
    old_files = persisted(etc)
    assert set(old_files) == set(TOOLS)

    refused = host.nfc("apply", str(artifacts[LEGACY, NEW]), "--confirm", "30", "--persist")
    assert refused.returncode == 2, refused.stderr
    assert "give --persist to 'nfc confirm' instead" in refused.stderr
    assert f"{NEW.name}:" not in host.rules(LEGACY), "a refused apply loaded the ruleset"

    host.apply(artifacts[LEGACY, NEW], "--confirm", "30")
    assert persisted(etc) == old_files, "an unconfirmed ruleset was persisted"
    # nor one applied under that pending confirmation
    refused = host.nfc("apply", str(artifacts[LEGACY, MID]), "--persist")
    assert refused.returncode == 2 and "waits for 'nfc confirm'" in refused.stderr, refused.stderr
    assert f"{MID.name}:" not in host.rules(LEGACY) and persisted(etc) == old_files
    done = host.nfc("confirm", "--persist")
    assert done.returncode == 0, done.stderr
    assert "confirmed: the applied ruleset stays" in done.stdout
    assert persisted(etc) == {
        name: with_owned_tables((artifacts[LEGACY, NEW] / name).read_text()) for name in TOOLS
    }


def test_persist_is_refused_for_nft_before_anything_is_loaded(
    host: Host, artifacts: Artifacts, tmp_path: Path
) -> None:
    etc = tmp_path / "iptables"
    done = host.nfc("apply", str(artifacts[NFT, OLD]), "--persist", "--persist-dir", str(etc))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("nfc: error: --persist writes iptables-persistent's rules.v4 and rules.v6")
    assert nothing_loaded(host) and not etc.exists()
    host.apply(artifacts[NFT, OLD], "--confirm", "30")
    done = host.nfc("confirm", "--persist", "--persist-dir", str(etc))
    assert done.returncode == 2 and "--persist writes" in done.stderr, done.stderr
    assert host.nfc("confirm").returncode == 0, "the refused confirm --persist confirmed"
