"""Sends raw request bytes (stdin) over TLS and prints the raw response, for requests that
well-behaved clients refuse to send (conflicting Content-Length, CL + Transfer-Encoding),
optionally preceded by a PROXY protocol header (v1 text or v2 binary) as a load balancer
would send, and from a chosen loopback source address.

With `--alpn h2` and an empty request it is a client that finishes the TLS handshake and
then says nothing, not even the h2 preface.

With `--trickle SECONDS` the PROXY header goes in three pieces, that long apart (a slow
balancer); `--tlv BYTES` adds a v2 no-op TLV of that many bytes (as balancers add their own).

usage: raw_https.py --port PORT --ca CA_FILE [--source 127.0.0.2] [--alpn h2]
                    [--wait SECONDS] [--proxy v1|v2 --claim IP:PORT]
                    [--trickle SECONDS] [--tlv BYTES] < request
"""

import argparse
import ipaddress
import socket
import ssl
import struct
import sys
import time


def proxy_header(version, claim, port, tlv=0):
    host, _, claim_port = claim.rpartition(":")
    ip = ipaddress.ip_address(host.strip("[]"))
    if version == "v1":
        family = "TCP4" if ip.version == 4 else "TCP6"
        dest = "127.0.0.1" if ip.version == 4 else "::1"
        return f"PROXY {family} {ip} {dest} {claim_port} {port}\r\n".encode()
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    # PP2_TYPE_NOOP (0x04): a TLV the receiver skips.
    extra = bytes([0x04]) + struct.pack("!H", tlv) + b"\0" * tlv if tlv else b""
    if ip.version == 4:
        body = ip.packed + ipaddress.ip_address("127.0.0.1").packed
        body += struct.pack("!HH", int(claim_port), port) + extra
        return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body
    body = ip.packed + ipaddress.ip_address("::1").packed + struct.pack("!HH", int(claim_port), port)
    body += extra
    return signature + bytes([0x21, 0x21]) + struct.pack("!H", len(body)) + body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--source", default="127.0.0.1")
    parser.add_argument("--proxy", choices=["v1", "v2"])
    parser.add_argument("--claim", default="203.0.113.7:5555")
    parser.add_argument("--alpn", default="http/1.1")
    parser.add_argument("--wait", type=float, default=10, help="seconds to wait for the close")
    parser.add_argument("--trickle", type=float, default=0)
    parser.add_argument("--tlv", type=int, default=0)
    args = parser.parse_args()
    request = sys.stdin.buffer.read()
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols([args.alpn])
    chunks = []
    with socket.create_connection(("127.0.0.1", args.port), timeout=args.wait,
                                  source_address=(args.source, 0)) as raw:
        if args.proxy:
            header = proxy_header(args.proxy, args.claim, args.port, args.tlv)
            if args.trickle:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                third = len(header) // 3
                for piece in (header[:third], header[third:2 * third]):
                    raw.sendall(piece)
                    time.sleep(args.trickle)
                header = header[2 * third:]
            raw.sendall(header)
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(request)
                try:
                    while True:
                        data = tls.recv(65536)
                        if not data:
                            break
                        chunks.append(data)
                except (socket.timeout, ssl.SSLError, ConnectionResetError):
                    print("NOT CLOSED", file=sys.stderr)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError) as e:
            print(f"NO TLS: {e}", file=sys.stderr)
    sys.stdout.buffer.write(b"".join(chunks))


if __name__ == "__main__":
    main()
