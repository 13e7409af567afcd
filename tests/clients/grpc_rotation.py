"""A steady loop of gRPC calls while certificates rotate: one long-lived connection and a new
connection (a new TLS handshake) every few calls. Prints a JSON summary; exits non-zero if
any call failed.

usage: grpc_rotation.py --target localhost:PORT --ca CA_BUNDLE --seconds N
"""

import argparse
import json
import sys
import time

import grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    roots = open(args.ca, "rb").read()
    version = "/versionpb_v2.API/GetVersion"

    def call(channel):
        return channel.unary_unary(version)(b"", timeout=10)

    kept = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(roots))
    ok = failed = fresh = 0
    errors = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for channel, is_fresh in [(kept, False), (None, True)]:
            try:
                if is_fresh:
                    with grpc.secure_channel(args.target, grpc.ssl_channel_credentials(roots)) as c:
                        call(c)
                    fresh += 1
                else:
                    call(channel)
                ok += 1
            except grpc.RpcError as e:
                failed += 1
                errors.append(f"{e.code()}: {e.details()}")
        time.sleep(0.02)
    kept.close()
    print(json.dumps({"ok": ok, "failed": failed, "new_connections": fresh, "errors": errors[:5]}))
    sys.exit(1 if failed or ok == 0 else 0)


if __name__ == "__main__":
    main()
