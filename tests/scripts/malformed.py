#!/usr/bin/python3
"""Sends malformed frames at the VIP from the client namespace (bounded).

usage: malformed.py IFACE DST_MAC VIP COUNT
Prints one line per frame kind with how many were sent.
"""
import sys

from scapy.all import Ether, IP, TCP, Raw, conf, get_if_hwaddr, sendp  # noqa: E402

conf.verb = 0
iface, dst_mac, vip, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
src = "10.77.0.2"
# A bridge drops frames from an all-zero source MAC: use the real one.
src_mac = get_if_hwaddr(iface)


def ipv4_bytes(**kw):
    return bytes(IP(src=src, dst=vip, **kw) / TCP(sport=40000, dport=80, flags="S"))


eth = bytes(Ether(src=src_mac, dst=dst_mac, type=0x0800))
good = ipv4_bytes()
frames = {
    # IP header cut off after 10 bytes
    "truncated_ipv4": eth + good[:10],
    # IHL = 3 (12 bytes), less than the minimum of 5
    "ihl_below_5": eth + bytes([0x43]) + good[1:],
    # total length claims 1400 bytes, frame carries 40
    "total_length_beyond_frame": eth + good[:2] + (1400).to_bytes(2, "big") + good[4:],
    # TCP data offset 2 (8 bytes), below the minimum of 5
    "tcp_data_offset_2": eth + bytes(IP(src=src, dst=vip) / TCP(sport=40001, dport=80, flags="S", dataofs=2)),
    # TCP header cut to 8 bytes
    "truncated_tcp": eth + bytes(IP(src=src, dst=vip, proto=6, len=28)) [:20] + good[20:28],
    # Ethernet + VLAN tag with nothing after it
    "truncated_vlan": bytes(Ether(src=src_mac, dst=dst_mac, type=0x8100)) + b"\x00\x01",
    # ARP body cut short
    "truncated_arp": bytes(Ether(src=src_mac, dst=dst_mac, type=0x0806)) + b"\x00\x01\x08\x00",
}
for name, frame in frames.items():
    sendp(Raw(frame), iface=iface, count=count)
    print(f"{name} {count}")
