"""find_addr: show how a guest's IPv4 address is found (for debugging).

    find_addr NAME-OR-MAC [--network NET] [--wait SECONDS] [--json] [-v]

Looks the domain's MAC(s) up in libvirt (or takes the MAC given), then reads the network's
DHCP leases (libvirt's virNetworkGetDHCPLeases, else dnsmasq's lease-helper status file).
Prints the IPv4 address on stdout; ``--json`` prints mac, ip, source, hostname, expiry and how
long it waited; ``-v`` narrates each step on stderr.

Exit status: 0 found; 2 usage; 3 no lease within the wait; 4 no such domain;
5 libvirt unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Optional

from ..config import Settings, load_settings
from ..errors import ConfigError, LibvirtUnavailable, NetworkUnavailable, NotFound
from ..hypervisor import LibvirtHypervisor
from ..leases import Lease
from ..waiting import Deadline, WaitTimeout, poll_until
from ..wiring import real_hypervisor, real_leases

log = logging.getLogger("find_addr")

EXIT_FOUND, EXIT_USAGE, EXIT_NO_LEASE, EXIT_NO_DOMAIN, EXIT_NO_LIBVIRT = 0, 2, 3, 4, 5
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="find_addr",
        description="Print a guest's IPv4 address from the libvirt network's DHCP leases.",
        epilog="exit status: 0 found, 2 usage, 3 no lease within --wait, 4 no such domain, "
               "5 libvirt unreachable",
    )
    p.add_argument("target", metavar="NAME-OR-MAC", help="domain name, or a MAC address")
    p.add_argument("--network", help="libvirt network (default: from the configuration, else 'default')")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="keep looking this long for a lease (default: look once)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the bare address")
    p.add_argument("--config", type=Path, help="configuration file")
    p.add_argument("-v", "--verbose", action="store_true", help="narrate each step on stderr")
    return p


def _settings(path: Optional[Path]) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        if path is not None:
            raise
        log.info("no usable configuration (%s); using built-in defaults", exc)
        return Settings()


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="find_addr: %(message)s", stream=sys.stderr)
    if args.wait < 0:
        print("find_addr: --wait must be 0 or more seconds", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = _settings(args.config)
    except ConfigError as exc:
        print(f"find_addr: {exc}", file=sys.stderr)
        return EXIT_USAGE
    network = args.network or settings.libvirt.network
    hv = real_hypervisor(settings)
    try:
        return _find(hv, args.target, network, args.wait, args.json)
    except LibvirtUnavailable as exc:
        print(f"find_addr: {exc}\n  start it with: scripts/host-setup.sh "
              f"(or: setsid tini -s -- libvirtd &)", file=sys.stderr)
        return EXIT_NO_LIBVIRT
    except NetworkUnavailable as exc:
        print(f"find_addr: {exc}", file=sys.stderr)
        return EXIT_NO_LEASE
    finally:
        hv.close()


def _find(hv: LibvirtHypervisor, target: str, network: str, wait_s: float, as_json: bool) -> int:
    if _MAC.match(target):
        macs: tuple[str, ...] = (target.lower(),)
        log.info("%s is a MAC address; looking it up directly", target)
    else:
        try:
            macs = hv.domain_macs(target)
        except NotFound:
            print(f"find_addr: no domain named {target!r} (see `virsh list --all`)", file=sys.stderr)
            return EXIT_NO_DOMAIN
        log.info("domain %s has MAC(s) %s", target, ", ".join(macs) or "(none)")
    leases = real_leases(hv)
    started = time.monotonic()

    def probe() -> Optional[Lease]:
        for mac in macs:
            log.info("reading leases of network %s for %s", network, mac)
            lease = leases.current(network, mac)
            if lease is not None:
                return lease
        return None

    try:
        lease = poll_until(probe, Deadline.after(wait_s), interval_s=0.1, what="a lease")
    except WaitTimeout:
        print(f"find_addr: no DHCP lease for {', '.join(macs) or target} on network {network!r}"
              f" within {wait_s:g} s", file=sys.stderr)
        return EXIT_NO_LEASE
    waited = round(time.monotonic() - started, 3)
    log.info("found %s (source: %s) after %.3f s", lease.ip, lease.source, waited)
    if as_json:
        print(json.dumps({"mac": lease.mac, "ip": lease.ip, "source": lease.source,
                          "hostname": lease.hostname, "expiry_time": lease.expiry_time,
                          "network": network, "waited_s": waited}))
    else:
        print(lease.ip)
    return EXIT_FOUND


if __name__ == "__main__":
    sys.exit(main())
