"""Sends raw request bytes (stdin) over TLS and prints the raw response, for requests that
well-behaved clients refuse to send (conflicting Content-Length, CL + Transfer-Encoding).

usage: raw_https.py --port PORT --ca CA_FILE < request
"""

import argparse
import socket
import ssl
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    request = sys.stdin.buffer.read()
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", args.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            chunks = []
            try:
                while True:
                    data = tls.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
            except (socket.timeout, ssl.SSLError, ConnectionResetError):
                print("NOT CLOSED", file=sys.stderr)
    sys.stdout.buffer.write(b"".join(chunks))


if __name__ == "__main__":
    main()
