#!/usr/bin/python3
"""Malformed and unusual frames at the VIPs (bounded). usage: IFACE DST_MAC

Prints `kind count` lines: truncations of a TCP SYN at every length that cuts
into the IP or TCP header (IPv4 and IPv6), IPv6 extension header chains
(valid, too long, truncated), IPv4/IPv6 fragments, bogus TCP flag sets,
802.1Q/802.1ad tagged frames to the VIPs and to the edge's host address.
"""
import sys

from scapy.all import (  # noqa: E402
    ARP, IP, IPv6, TCP, Ether, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Raw, conf, get_if_hwaddr, sendp,
)

conf.verb = 0
iface, dst_mac = sys.argv[1], sys.argv[2]
src_mac = get_if_hwaddr(iface)
eth = Ether(src=src_mac, dst=dst_mac)
v4 = dict(src="10.77.0.2", dst="10.77.0.10")
v6 = dict(src="fd77::2", dst="fd77::10")
counts = {}


def send(kind, frames):
    frames = [f if isinstance(f, bytes) else bytes(f) for f in frames]
    sendp([Raw(f) for f in frames], iface=iface)
    counts[kind] = counts.get(kind, 0) + len(frames)


syn4 = bytes(eth / IP(**v4) / TCP(sport=41000, dport=80, flags="S"))
syn6 = bytes(eth / IPv6(**v6) / TCP(sport=41001, dport=80, flags="S"))
# Cut inside the IP header or the TCP header (after the Ethernet header).
send("truncations", [syn4[:n] for n in range(15, len(syn4))] + [syn6[:n] for n in range(15, len(syn6))])

chain = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
send("ext_chain_ok", [eth / IPv6(**v6) / chain / TCP(sport=41002, dport=80, flags="S")])
long_chain = IPv6ExtHdrHopByHop()
for _ in range(7):
    long_chain = long_chain / IPv6ExtHdrDestOpt()
send("ext_chain_too_long", [eth / IPv6(**v6) / long_chain / TCP(sport=41003, dport=80, flags="S")])
ext = bytes(eth / IPv6(**v6, nh=0, plen=64) / Raw(b"\x06\x08"))  # HBH claims 72 bytes
send("ext_truncated", [ext])

send("fragments", [
    eth / IP(**v4, flags="MF", frag=0) / TCP(sport=41004, dport=80, flags="S"),
    eth / IP(**v4, frag=100, proto=6) / Raw(b"x" * 16),
    eth / IPv6(**v6) / IPv6ExtHdrFragment(nh=6, m=1) / TCP(sport=41005, dport=80, flags="S"),
])

send("bogus_flags", [
    eth / IP(**v4) / TCP(sport=41006, dport=80, flags=""),      # null
    eth / IP(**v4) / TCP(sport=41007, dport=80, flags="SF"),    # SYN+FIN
    eth / IP(**v4) / TCP(sport=41008, dport=80, flags="SR"),    # SYN+RST
    eth / IP(**v4) / TCP(sport=41009, dport=80, flags="FPU"),   # xmas
    eth / IPv6(**v6) / TCP(sport=41010, dport=80, flags="F"),   # FIN without ACK
])



def tagged(tpid, frame):
    """`frame` with a VLAN tag (`tpid`, VID 7) after the MAC addresses."""
    frame = bytes(frame)
    return frame[:12] + tpid.to_bytes(2, "big") + b"\x00\x07" + frame[12:]


arp_vip = Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
    op=1, hwsrc=src_mac, psrc="10.77.0.2", pdst="10.77.0.10")
send("vlan_vip", [
    tagged(0x8100, eth / IP(**v4) / TCP(sport=41011, dport=80, flags="S")),
    tagged(0x88A8, eth / IP(**v4) / TCP(sport=41012, dport=80, flags="S")),
    tagged(0x8100, eth / IPv6(**v6) / TCP(sport=41013, dport=80, flags="S")),
    tagged(0x8100, arp_vip),
])
send("vlan_host", [
    tagged(0x8100, eth / IP(src="10.77.0.2", dst="10.77.0.1") / TCP(sport=41014, dport=80, flags="S")),
    tagged(0x88A8, eth / IP(src="10.77.0.2", dst="10.77.0.1") / TCP(sport=41015, dport=80, flags="S")),
])

for k, v in counts.items():
    print(f"{k} {v}")
