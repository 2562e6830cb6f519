# TRex stateless profile: UDP flood (60 B frames) from 198.18.0.0/15.
# Not runnable in the lab (needs a DPDK NIC); see README.
from trex_stl_lib.api import *

class STLUdpFlood(object):
    def get_streams(self, direction=0, **kwargs):
        base = Ether() / IP(src="198.18.0.1", dst="10.77.0.10") / UDP(sport=1024, dport=53)
        pad = max(0, 60 - len(base)) * "x"
        vm = STLVM()
        vm.var(name="src", min_value="198.18.0.1", max_value="198.19.255.254", size=4, op="random")
        vm.write(fv_name="src", pkt_offset="IP.src")
        vm.fix_chksum()
        return [STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm), mode=STLTXCont())]

def register():
    return STLUdpFlood()
