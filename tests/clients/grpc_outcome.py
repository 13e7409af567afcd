"""One call to the stand-in pachd's echo service through pachgate (grpcio), reported as
JSON for the Rust test to judge: {"code", "details", "replies", "seconds"}, and for
`stats` the stand-in's count of server streams their client abandoned ("cancelled"). It
judges nothing itself and exits 0 whatever the call's status.

usage: grpc_outcome.py --target localhost:PORT --ca CA_FILE (unary|server|stats)
         [--count N] [--interval-ms MS] [--deadline S] [--token TOKEN]
"""

import argparse
import json
import time

import grpc

from grpc_checks import channel, echo_request, echo_response, method


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--plaintext", action="store_true")
    parser.add_argument("shape", choices=["unary", "server", "stats"])
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--interval-ms", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=60)
    parser.add_argument("--token", help="sent as authn-token, as pachctl does")
    args = parser.parse_args()
    request = echo_request(b"tick", count=args.count, interval_ms=args.interval_ms)
    outcome = {"code": "OK", "details": "", "replies": 0}
    metadata = [("authn-token", args.token)] if args.token else None
    start = time.monotonic()
    with channel(args) as ch:
        try:
            if args.shape == "stats":
                reply = method(ch, "unary", "Stats")(b"", timeout=args.deadline, metadata=metadata)
                outcome["cancelled"] = echo_response(reply)["sequence"]
            elif args.shape == "unary":
                method(ch, "unary", "Unary")(request, timeout=args.deadline, metadata=metadata)
                outcome["replies"] = 1
            else:
                for _ in method(ch, "server", "ServerStream")(request, timeout=args.deadline, metadata=metadata):
                    outcome["replies"] += 1
        except grpc.RpcError as e:
            outcome["code"] = e.code().name
            outcome["details"] = e.details() or ""
    outcome["seconds"] = round(time.monotonic() - start, 3)
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
