# TRex stateless profile: malformed IPv4 in turn (IHL=3, total length beyond
# the frame, TCP data offset 2), sources in 198.18.0.0/15.
# Not runnable in the lab (needs a DPDK NIC); see README.
from trex_stl_lib.api import *

class STLMalformed(object):
    def stream(self, pkt):
        vm = STLVM()
        vm.var(name="src", min_value="198.18.0.1", max_value="198.19.255.254", size=4, op="random")
        vm.write(fv_name="src", pkt_offset="IP.src")
        pad = max(0, 60 - len(pkt)) * "x"
        return STLStream(packet=STLPktBuilder(pkt=pkt / pad, vm=vm), mode=STLTXCont(percentage=33))

    def get_streams(self, direction=0, **kwargs):
        ip = dict(src="198.18.0.1", dst="10.77.0.10")
        return [
            self.stream(Ether() / IP(ihl=3, **ip) / TCP(dport=80, flags="S")),
            self.stream(Ether() / IP(len=1400, **ip) / TCP(dport=80, flags="S")),
            self.stream(Ether() / IP(**ip) / TCP(dport=80, flags="S", dataofs=2)),
        ]

def register():
    return STLMalformed()
