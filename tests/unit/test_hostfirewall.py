"""The host firewall's nft script: scoped to the guests' bridge, idempotent, values validated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vm_isolation.hostfirewall import FirewallPolicy, _element, ruleset

POLICY = FirewallPolicy(bridge="virbr0", address="192.168.122.1")


def test_every_rule_hangs_off_a_jump_for_packets_from_the_guests_bridge() -> None:
    """The base chains hold only `iifname virbr0 jump ...`: the host's other traffic is untouched."""
    rules = [line for line in ruleset(POLICY).splitlines() if line.startswith("add rule inet vmiso input ")
             or line.startswith("add rule inet vmiso forward ")]
    assert rules == ['add rule inet vmiso input iifname "virbr0" jump guest_input',
                     'add rule inet vmiso forward iifname "virbr0" jump guest_forward']


def test_the_host_accepts_only_replies_dhcp_dns_and_opened_agent_ports_then_drops() -> None:
    """guest_input: established, DHCP, DNS on the bridge address, the per-guest set, drop."""
    guest_input = [line.split(" guest_input ", 1)[1] for line in ruleset(POLICY).splitlines()
                   if line.startswith("add rule inet vmiso guest_input ")]
    assert guest_input == [
        "ct state established,related accept", "meta nfproto ipv4 udp dport 67 accept",
        "ip daddr 192.168.122.1 udp dport 53 accept", "ip daddr 192.168.122.1 tcp dport 53 accept",
        "ip daddr 192.168.122.1 ip saddr . tcp dport @agent_ports accept", "counter drop"]


def test_reinstalling_flushes_the_chains_but_never_the_set_of_openings() -> None:
    """`add set` keeps live guests' elements; each chain is flushed before its rules are re-added."""
    script = ruleset(POLICY)
    assert "flush set" not in script and "delete" not in script
    assert script.index("flush chain inet vmiso guest_input") < script.index("add rule inet vmiso guest_input")


@pytest.mark.parametrize("egress, allow, tail", [
    ("nat", (), ["meta nfproto ipv4 accept", "counter drop"]),
    ("none", (), ["counter drop"]),
    ("allow-list", ("10.20.0.0/16", "192.0.2.10/32"), ["ip daddr { 10.20.0.0/16, 192.0.2.10/32 } accept",
                                                       "counter drop"]),
])
def test_egress_follows_the_policy_after_the_hairpin_and_metadata_drops(
        egress: str, allow: tuple[str, ...], tail: list[str]) -> None:
    """guest->guest through the host and 169.254.0.0/16 are dropped first, whatever the policy."""
    rules = [line.split(" guest_forward ", 1)[1] for line in
             ruleset(FirewallPolicy("virbr0", "192.168.122.1", egress, allow)).splitlines()
             if line.startswith("add rule inet vmiso guest_forward ")]
    assert rules == ['oifname "virbr0" counter drop', "ip daddr 169.254.0.0/16 counter drop", *tail]


@pytest.mark.parametrize("policy", [
    FirewallPolicy('virbr0" accept #', "192.168.122.1"), FirewallPolicy("virbr0", "1.2.3.4; flush ruleset"),
    FirewallPolicy("virbr0", "192.168.122.1", "allow-list", ("10.0.0.0/8 } accept",)),
    FirewallPolicy("virbr0", "192.168.122.1", "everything"),
])
def test_a_value_that_is_not_what_it_claims_is_refused(policy: FirewallPolicy) -> None:
    """Interface names, addresses and networks are parsed before they reach a rule."""
    with pytest.raises(ValueError):
        ruleset(policy)


def test_an_opening_is_one_ip_and_one_port() -> None:
    """The set element is built from a parsed IPv4 address and a port in range."""
    assert _element("192.168.122.9", 5051) == "{ 192.168.122.9 . 5051 }"
    for ip, port in (("192.168.122.9 . 22, 0.0.0.0", 22), ("192.168.122.9", 0), ("192.168.122.9", 70000)):
        with pytest.raises(ValueError):
            _element(ip, port)


def test_an_executor_that_is_not_root_trusts_what_host_set_up_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nft needs root; a --switch_user executor reads the status file host set-up writes."""
    from vm_isolation import hostfirewall

    monkeypatch.setattr(hostfirewall.os, "geteuid", lambda: 1001)
    status = tmp_path / "firewall.json"
    assert "recorded no nftables table" in hostfirewall.problems("virbr0", status)[0]
    status.write_text('{"table": "inet vmiso", "bridge": "virbr0"}')
    assert hostfirewall.problems("virbr0", status) == []
    assert hostfirewall.problems("virbr1", status) != []


def test_each_network_has_its_own_table_so_set_ups_never_replace_each_other() -> None:
    """`default` keeps inet vmiso; any other network gets vmiso_<name>, a name nft accepts
    whatever the libvirt network is called (a hash tells apart names that differ only there)."""
    from vm_isolation.hostfirewall import status_file_for, table_for

    assert table_for("default") == "vmiso"
    assert table_for("tenants_2") == "vmiso_tenants_2"
    odd = [table_for(name) for name in ("ten-ants", "ten_ants", 'x"; flush ruleset', "n" * 200)]
    assert len(set(odd)) == 4 and all(re.fullmatch(r"vmiso_[A-Za-z0-9_]{1,41}", t) for t in odd)
    script = ruleset(FirewallPolicy("virbr7", "192.168.7.1", table="vmiso_tenants"))
    assert all(re.search(r" inet vmiso_tenants( |$)", line) for line in script.splitlines())
    assert status_file_for("vmiso").name == "firewall.json"
    assert status_file_for("vmiso_tenants").name == "firewall-vmiso_tenants.json"
    with pytest.raises(ValueError):
        ruleset(FirewallPolicy("virbr7", "192.168.7.1", table="filter"))


def test_a_metadata_address_is_forwarded_only_when_an_allow_list_names_it() -> None:
    """169.254.169.254/32 in `allow` is accepted before the link-local drop; 0.0.0.0/0 does not
    open link-local, nor does nat."""
    def forward(egress: str, allow: tuple[str, ...]) -> list[str]:
        return [line.split(" guest_forward ", 1)[1] for line in
                ruleset(FirewallPolicy("virbr0", "192.168.122.1", egress, allow)).splitlines()
                if line.startswith("add rule inet vmiso guest_forward ")]

    named = forward("allow-list", ("198.18.0.0/24", "169.254.169.254/32"))
    assert named[1:3] == ["ip daddr { 169.254.169.254/32 } accept", "ip daddr 169.254.0.0/16 counter drop"]
    for egress, allow in (("allow-list", ("0.0.0.0/0",)), ("nat", ())):
        rules = forward(egress, allow)
        assert rules[1] == "ip daddr 169.254.0.0/16 counter drop"
        assert not any("169.254.169.254" in rule for rule in rules)


def test_a_network_of_another_name_is_checked_against_its_own_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status file of `default`'s table says nothing about another network's bridge."""
    from vm_isolation import hostfirewall

    monkeypatch.setattr(hostfirewall.os, "geteuid", lambda: 1001)
    monkeypatch.setattr(hostfirewall, "STATUS_FILE", tmp_path / "firewall.json")
    (tmp_path / "firewall.json").write_text('{"table": "inet vmiso", "bridge": "virbr0"}')
    assert hostfirewall.NftFirewall("vmiso_tenants").problems("virbr0") != []
    (tmp_path / "firewall-vmiso_tenants.json").write_text('{"table": "inet vmiso_tenants", "bridge": "virbr7"}')
    assert hostfirewall.NftFirewall("vmiso_tenants").problems("virbr7") == []
