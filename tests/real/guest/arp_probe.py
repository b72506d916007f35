#!/usr/bin/env python3
"""Raw ARP frames from inside a guest (stdlib only; the spoofing tests upload it).

  ask ETH_SRC SPA TPA                     ARP request for TPA, from MAC ETH_SRC (also the sender
                                          hardware address) and IP SPA; prints `reply` (exit 0)
                                          if an answer for TPA arrives within 3 s, else `noreply`
  tell ETH_DST ETH_SRC OP SHA SPA THA TPA one ARP frame (OP 1 request, 2 reply), sent 3 times
"""

import socket
import struct
import sys
import time

ETH_P_ARP = 0x0806


def mac(text):
    return bytes.fromhex(text.replace(":", ""))


def frame(eth_dst, eth_src, op, sha, spa, tha, tpa):
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + socket.inet_aton(spa) + tha + socket.inet_aton(tpa)
    return eth_dst + eth_src + struct.pack("!H", ETH_P_ARP) + arp


def main(argv):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind(("eth0", ETH_P_ARP))
    if argv[0] == "ask":
        src, spa, tpa = mac(argv[1]), argv[2], argv[3]
        sock.send(frame(b"\xff" * 6, src, 1, src, spa, b"\0" * 6, tpa))
        sock.settimeout(0.5)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                data = sock.recv(128)
            except TimeoutError:
                continue
            if len(data) >= 42 and struct.unpack("!H", data[20:22])[0] == 2 and data[28:32] == socket.inet_aton(tpa):
                print("reply")
                return 0
        print("noreply")
        return 1
    if argv[0] == "tell":
        eth_dst, eth_src, op, sha, spa, tha, tpa = argv[1:8]
        for _ in range(3):
            sock.send(frame(mac(eth_dst), mac(eth_src), int(op), mac(sha), spa, mac(tha), tpa))
        print("sent")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
