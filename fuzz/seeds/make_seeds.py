import os, glob
from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP, ARP, raw, ICMPv6DestUnreach
def put(t, name, data):
    os.makedirs(t, exist_ok=True)
    open(f"{t}/{name}", "wb").write(data)
e = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
put("wire_classify", "tcp-syn", raw(e/IP(src="10.77.0.2", dst="10.77.0.10")/TCP(sport=50000, dport=80, flags="S")))
put("wire_classify", "udp-dns", raw(e/IP(src="10.77.0.2", dst="10.77.0.10")/UDP(sport=40000, dport=53)/b"\x12\x34\x01\x00\x00\x01"))
put("wire_classify", "udp6", raw(e/IPv6(src="fd00::2", dst="fd00::10")/UDP(sport=40000, dport=53)/b"q"))
sent = IP(src="10.77.0.10", dst="10.77.0.3")/UDP(sport=61000, dport=5353)/b"x"
put("wire_classify", "icmp-port-unreachable", raw(e/IP(src="10.77.0.3", dst="10.77.0.10")/ICMP(type=3, code=3)/raw(sent)[:28]))
sent6 = IPv6(src="fd00::10", dst="fd00::3")/UDP(sport=61000, dport=5353)/b"x"
put("wire_classify", "icmp6-port-unreachable", raw(e/IPv6(src="fd00::3", dst="fd00::10")/ICMPv6DestUnreach(code=4)/raw(sent6)))
put("wire_classify", "arp", raw(Ether(src="02:00:00:00:00:02", dst="ff:ff:ff:ff:ff:ff")/ARP(op=1, psrc="10.77.0.2", pdst="10.77.0.10")))
put("wire_classify", "fragment", raw(e/IP(src="10.77.0.2", dst="10.77.0.10", flags="MF")/UDP(sport=1, dport=53)/b"frag"))
for f in sorted(glob.glob("../../tests/corpus/http-bad/*.bin")):
    b = os.path.basename(f)
    if "tls" in b: continue
    put("http_request_head", b, b"\x00" + open(f, "rb").read())
put("http_request_head", "get", b"\x00GET /a?b=c HTTP/1.1\r\nHost: a.example\r\nUser-Agent: curl\r\nAccept: */*\r\n\r\n")
put("http_request_head", "post-chunked", b"\x00POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
put("http_response_head", "ok", b"\x00HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
put("http_response_head", "chunked", b"\x00HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
put("http_response_head", "interim", b"\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
put("http_response_head", "head-304", b"\x01HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
put("http_chunked", "two-chunks", b"\x03" + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
put("http_chunked", "empty", b"\x01" + b"0\r\n\r\n")
put("http_chunked", "bad-size", b"\x02" + b"zz\r\nhello\r\n")
def frame(t, flags, sid, payload):
    return len(payload).to_bytes(3, "big") + bytes([t, flags]) + sid.to_bytes(4, "big") + payload
settings = frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64")
hdrs = frame(1, 0x5, 1, bytes.fromhex("828684") + b"\x41\x09a.example")
post = frame(1, 0x4, 3, bytes.fromhex("838684") + b"\x41\x01a") + frame(0, 0x1, 3, b"body")
put("h2_connection", "get", b"\x07" + settings + hdrs)
put("h2_connection", "post", b"\x03" + settings + post)
put("h2_connection", "ping-window-rst", b"\x10" + settings + frame(6, 0, 0, b"12345678") + frame(8, 0, 0, b"\x00\x00\x10\x00") + hdrs + frame(3, 0, 1, b"\x00\x00\x00\x08"))
put("h2_connection", "continuation", b"\x05" + settings + frame(1, 0x1, 1, bytes.fromhex("8286")) + frame(9, 0x4, 1, bytes.fromhex("84") + b"\x41\x01a"))
put("hpack_decode", "rfc7541-c3", bytes.fromhex("828684410f7777772e6578616d706c652e636f6d") + b"\xfe" + bytes.fromhex("828684be58086e6f2d6361636865") + b"\xfe" + bytes.fromhex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"))
put("hpack_decode", "rfc7541-c4-huffman", bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
put("tls_peek", "client-hello", open("../../tests/corpus/http-bad/25-tls-client-hello.bin", "rb").read())
for f in glob.glob("../../configs/*.toml"):
    put("config_compile", os.path.basename(f), open(f, "rb").read())
tok = b"Authorization: Bearer 0123456789abcdef-token\r\n"
put("engine_api", "hello", b"\x00GET /v1/hello HTTP/1.1\r\nFerrogate-Protocol: 1\r\n\r\n")
put("engine_api", "status-token", b"\x01GET /status HTTP/1.1\r\n" + tok + b"\r\n")
put("engine_api", "wrong-token", b"\x01GET /stats HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n")
cfg = open("../../configs/lab.toml", "rb").read()
put("engine_api", "validate", b"\x00POST /validate HTTP/1.1\r\nX-Ferrogate-Path: /etc/ferrogate/a.toml\r\nContent-Length: %d\r\n\r\n" % len(cfg) + cfg)
put("engine_api", "push-bad-hash", b"\x00POST /v1/snapshot HTTP/1.1\r\nFerrogate-Protocol: 1\r\nX-Ferrogate-Hash: 00000000000000ff\r\nContent-Length: 3\r\n\r\na=1")
put("engine_api", "apply", b"\x01POST /apply HTTP/1.1\r\n" + tok + b"Content-Length: 3\r\n\r\na=1")
put("engine_api", "wrong-protocol", b"\x00GET /v1/snapshot HTTP/1.1\r\nFerrogate-Protocol: 7\r\n\r\n")
