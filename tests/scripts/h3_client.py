#!/opt/ferrogate/py/bin/python3
"""An HTTP/3 client for the lab (tests/tests/h3_e2e.rs), on aioquic's sans-IO
API (QuicConnection + H3Connection) over a plain UDP socket, bounded in time.

usage: h3_client.py --ca CA.pem --sni NAME [--host IP] [--port N]
                    [--get PATH]... [--download PATH] [--upload PATH --upload-bytes N]
                    [--migrate] [--timeout SECONDS]

One connection. The requests run in batches, one after the other:
  1. every --get, all at once (concurrent streams);
  2. --download (the body is only hashed);
  3. --upload: a POST of N random bytes (their sha256, and the checksum
     fg-test-origin's /echo answers with, are printed).
--migrate: once batch 1 is answered, the connection goes on from a new UDP
socket (a new source port) with the next connection ID the server issued,
and batches 2 and 3 (or, without them, batch 1 again) run on that path.

Prints one JSON object on stdout: per response its status, length, sha256,
the body when short, and the headers of interest; what was uploaded; the
source ports used; errors. Exits 1 on any error (a status other than 2xx
is not an error here: the caller judges statuses).
"""

import argparse
import hashlib
import json
import os
import select
import socket
import ssl
import sys
import time

from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted

# Headers reported per response (alt-svc must not appear on HTTP/3;
# x-cache and age for the cache test).
INTERESTING = {"alt-svc", "content-length", "content-type", "x-origin", "via", "server", "x-cache", "age"}
# Bodies up to this size are printed as text.
SHORT_BODY = 512


def origin_sum(data):
    """fg-test-origin's /echo checksum: s = s*31 + b, wrapping at 64 bits."""
    s = 0
    mask = (1 << 64) - 1
    for b in data:
        s = (s * 31 + b) & mask
    return s


class Timeout(Exception):
    pass


class Client:
    def __init__(self, args):
        self.args = args
        self.addr = (args.host, args.port)
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            server_name=args.sni,
            verify_mode=ssl.CERT_REQUIRED,
            idle_timeout=args.timeout,
        )
        config.load_verify_locations(cafile=args.ca)
        self.quic = QuicConnection(configuration=config)
        self.h3 = H3Connection(self.quic)
        self.sock = self.new_socket()
        self.ports = [self.sock.getsockname()[1]]
        self.deadline = time.monotonic() + args.timeout
        self.alpn = None
        self.terminated = None
        # stream id → response record
        self.streams = {}
        self.datagrams_sent = 0
        self.datagrams_received = 0

    @staticmethod
    def new_socket():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        s.setblocking(False)
        return s

    def flush(self):
        for data, addr in self.quic.datagrams_to_send(now=time.monotonic()):
            self.sock.sendto(data, addr)
            self.datagrams_sent += 1

    def pump(self, done):
        """Drives the connection until done() or the deadline (Timeout)."""
        while True:
            self.process_events()
            if self.terminated is not None:
                raise RuntimeError(f"connection terminated: {self.terminated}")
            if done():
                self.flush()
                return
            self.flush()
            now = time.monotonic()
            if now >= self.deadline:
                raise Timeout(f"no completion within {self.args.timeout}s")
            wait = self.deadline - now
            timer = self.quic.get_timer()
            if timer is not None:
                wait = min(wait, max(0.0, timer - now))
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                while True:
                    try:
                        data, addr = self.sock.recvfrom(65536)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    self.datagrams_received += 1
                    self.quic.receive_datagram(data, addr, now=time.monotonic())
            timer = self.quic.get_timer()
            if timer is not None and time.monotonic() >= timer:
                self.quic.handle_timer(now=time.monotonic())

    def process_events(self):
        while True:
            event = self.quic.next_event()
            if event is None:
                return
            if isinstance(event, HandshakeCompleted):
                self.alpn = event.alpn_protocol
            elif isinstance(event, ConnectionTerminated):
                self.terminated = {
                    "error_code": event.error_code,
                    "frame_type": event.frame_type,
                    "reason": event.reason_phrase,
                }
            for h3_event in self.h3.handle_event(event):
                self.on_h3(h3_event)

    def on_h3(self, event):
        rec = self.streams.get(event.stream_id)
        if rec is None:
            return
        if isinstance(event, HeadersReceived):
            fields = {k.decode().lower(): v.decode(errors="replace") for k, v in event.headers}
            status = int(fields.get(":status", "0"))
            if 100 <= status < 200:
                rec["informational"].append(status)
            elif rec["status"] is None:
                rec["status"] = status
                rec["headers"] = {k: v for k, v in fields.items() if k in INTERESTING}
            else:
                rec["trailers"] = True
        elif isinstance(event, DataReceived):
            rec["_hash"].update(event.data)
            rec["length"] += len(event.data)
            if len(rec["_short"]) <= SHORT_BODY:
                rec["_short"] += event.data
        if getattr(event, "stream_ended", False):
            rec["done"] = True

    def request(self, kind, method, path, body=None):
        sid = self.quic.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", self.args.sni.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"fg-h3-client/aioquic"),
        ]
        if body is not None:
            headers.append((b"content-length", str(len(body)).encode()))
        self.h3.send_headers(stream_id=sid, headers=headers, end_stream=body is None)
        if body is not None:
            self.h3.send_data(stream_id=sid, data=body, end_stream=True)
        rec = {
            "kind": kind,
            "method": method,
            "path": path,
            "stream": sid,
            "status": None,
            "informational": [],
            "headers": {},
            "length": 0,
            "done": False,
            "port": self.ports[-1],
            "_hash": hashlib.sha256(),
            "_short": b"",
        }
        self.streams[sid] = rec
        return rec

    def batch(self, reqs):
        recs = [self.request(*r) for r in reqs]
        self.pump(lambda: all(r["done"] for r in recs))
        return recs

    def migrate(self):
        """Moves the connection to a new UDP socket (new source port)."""
        old = self.sock
        self.sock = self.new_socket()
        self.ports.append(self.sock.getsockname()[1])
        old.close()
        # A new path takes a new connection ID (RFC 9000 §9.5); a no-op
        # when the server issued none.
        self.quic.change_connection_id()

    def close(self):
        self.quic.close()
        self.flush()
        self.sock.close()


def finish(rec):
    short = rec.pop("_short")
    rec["sha256"] = rec.pop("_hash").hexdigest()
    if rec["length"] <= SHORT_BODY:
        rec["body"] = short.decode(errors="replace")
    return rec


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="10.77.0.10")
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--sni", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--get", action="append", default=[], metavar="PATH")
    p.add_argument("--download", metavar="PATH")
    p.add_argument("--upload", metavar="PATH")
    p.add_argument("--upload-bytes", type=int, default=1 << 20)
    p.add_argument("--migrate", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0, help="overall bound, seconds")
    args = p.parse_args()

    out = {"ok": False, "errors": []}
    started = time.monotonic()
    client = None
    records = []
    try:
        client = Client(args)
        client.quic.connect(client.addr, now=time.monotonic())
        client.pump(lambda: client.alpn is not None)
        out["alpn"] = client.alpn
        batches = []
        if args.get:
            batches.append([("get", "GET", path) for path in args.get])
        later = []
        if args.download:
            later.append([("download", "GET", args.download)])
        if args.upload:
            body = os.urandom(args.upload_bytes)
            out["uploaded"] = {
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "origin_sum": origin_sum(body),
            }
            later.append([("upload", "POST", args.upload, body)])
        if args.migrate and not later:
            # Nothing else to do after moving: batch 1 again, on the new path.
            later = [list(batches[0])] if batches else []
        for i, b in enumerate(batches + later):
            if args.migrate and i == len(batches) and batches:
                client.migrate()
            client.batch(b)
        if args.migrate and not batches:
            out["errors"].append("--migrate needs --get (the batch before the move)")
    except Exception as e:  # noqa: BLE001 - every failure goes into the JSON
        out["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        if client is not None:
            out["ports"] = client.ports
            out["datagrams_sent"] = client.datagrams_sent
            out["datagrams_received"] = client.datagrams_received
            out["terminated"] = client.terminated
            # Every request, those that never completed too.
            records = list(client.streams.values())
            try:
                client.close()
            except OSError:
                pass
    out["responses"] = [finish(r) for r in records]
    for r in out["responses"]:
        if not r["done"]:
            out["errors"].append(f"{r['method']} {r['path']} (stream {r['stream']}) did not complete")
    out["elapsed_ms"] = int((time.monotonic() - started) * 1000)
    out["ok"] = not out["errors"]
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
