"""Known traffic through pachgate, and its /metrics read back with prometheus-client's own
OpenMetrics parser (tests/observability.rs compares the two).

usage:
  observe.py traffic --target localhost:PORT --ca CA --grpc-ok N --grpc-not-found M --ws-url URL
  observe.py metrics --url http://ADMIN/metrics   -> one JSON object: "name{k=v,...}" -> value
"""

import argparse
import asyncio
import json
import ssl
import sys
import urllib.request

import grpc
import websockets
from prometheus_client.openmetrics.parser import text_string_to_metric_families

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from grpc_checks import channel, echo_request, method  # noqa: E402


def traffic(args):
    ch = channel(args)
    unary = method(ch, "unary", "Unary")
    metadata = [("x-request-id", "observe-grpc"), ("authn-token", args.secret)]
    for _ in range(args.grpc_ok):
        unary(echo_request(payload=b"x" * 100), metadata=metadata, timeout=10)
    for _ in range(args.grpc_not_found):
        try:
            unary(echo_request(fail_code=5, fail_message="no such repo"), timeout=10)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                sys.exit(f"FAIL: wanted NOT_FOUND, got {e.code()}")
        else:
            sys.exit("FAIL: the failing call succeeded")

    async def one_websocket():
        ctx = ssl.create_default_context(cafile=args.ca)
        headers = {"x-request-id": "observe-ws"}
        async with websockets.connect(
            args.ws_url, ssl=ctx, additional_headers=headers, compression=None
        ) as ws:
            await ws.send("y" * 1000)
            if await ws.recv() != "y" * 1000:
                sys.exit("FAIL: websocket echo differs")

    asyncio.run(one_websocket())
    print("traffic done")


def metrics(args):
    text = urllib.request.urlopen(args.url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    print(json.dumps(samples))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["traffic", "metrics"])
    parser.add_argument("--target")
    parser.add_argument("--ca")
    parser.add_argument("--plaintext", action="store_true")
    parser.add_argument("--grpc-ok", type=int, default=0)
    parser.add_argument("--grpc-not-found", type=int, default=0)
    parser.add_argument("--ws-url")
    parser.add_argument("--secret", default="")
    parser.add_argument("--url")
    args = parser.parse_args()
    traffic(args) if args.mode == "traffic" else metrics(args)


if __name__ == "__main__":
    main()
