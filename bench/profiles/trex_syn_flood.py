# TRex stateless profile: TCP SYN flood from spoofed sources in 198.18.0.0/15
# to the ferrogate VIP. Not runnable in the lab (needs a DPDK NIC); see README.
from trex_stl_lib.api import *

class STLSynFlood(object):
    def create_stream(self):
        base = Ether() / IP(src="198.18.0.1", dst="10.77.0.10") / TCP(dport=80, flags="S")
        pad = max(0, 60 - len(base)) * "x"
        vm = STLVM()
        vm.var(name="src", min_value="198.18.0.1", max_value="198.19.255.254", size=4, op="random")
        vm.var(name="sport", min_value=1024, max_value=65535, size=2, op="random")
        vm.write(fv_name="src", pkt_offset="IP.src")
        vm.write(fv_name="sport", pkt_offset="TCP.sport")
        vm.fix_chksum()
        return STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm), mode=STLTXCont())

    def get_streams(self, direction=0, **kwargs):
        return [self.create_stream()]

def register():
    return STLSynFlood()
