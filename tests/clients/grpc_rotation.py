"""A steady loop of gRPC calls while certificates rotate: one long-lived connection and a new
connection (a new TLS handshake) every few calls. Prints a JSON summary (calls answered,
failed, refused; the verdict is the Rust test's, tests/common/mod.rs finish_call_loop).

With --drain the loop runs until pachgate stops accepting: calls refused at connect time
(never accepted) end the loop; any call that was accepted and then failed is a failure.

usage: grpc_rotation.py --target localhost:PORT --ca CA_BUNDLE --seconds N [--drain]
"""

import argparse
import json
import time

import grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--drain", action="store_true")
    args = parser.parse_args()
    roots = open(args.ca, "rb").read()
    version = "/versionpb_v2.API/GetVersion"

    def call(channel):
        return channel.unary_unary(version)(b"", timeout=10)

    kept = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(roots))
    ok = failed = fresh = 0
    errors = []
    refused = False
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and not refused:
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
                details = e.details() or ""
                if args.drain and e.code() == grpc.StatusCode.UNAVAILABLE and (
                    "Connection refused" in details or "failed to connect" in details
                ):
                    refused = True
                    break
                failed += 1
                errors.append(f"{e.code()}: {details}")
        time.sleep(0.02)
    kept.close()
    print(json.dumps({"ok": ok, "failed": failed, "new_connections": fresh,
                      "refused": refused, "errors": errors[:5]}))


if __name__ == "__main__":
    main()
