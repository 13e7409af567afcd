"""Known traffic through pachgate, and its /metrics read back with prometheus-client's own
OpenMetrics parser (tests/observability.rs compares the two).

usage:
  observe.py traffic --target localhost:PORT --ca CA --grpc-ok N --grpc-not-found M --ws-url URL
                                                  -> what each call got, as one JSON object
  observe.py metrics --url http://ADMIN/metrics   -> one JSON object: "name{k=v,...}" -> value
"""

import argparse
import asyncio
import json
import ssl
import sys
import urllib.request

import websockets
from prometheus_client.openmetrics.parser import text_string_to_metric_families

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from grpc_checks import channel, echo_outcome, echo_request, method  # noqa: E402


def traffic(args):
    """Makes the traffic; prints what each call got as one JSON object (the test's verdict)."""
    ch = channel(args)
    unary = method(ch, "unary", "Unary")
    metadata = [("x-request-id", "observe-grpc"), ("authn-token", args.secret)]
    ok = [
        echo_outcome(lambda: unary(echo_request(payload=b"x" * 100), metadata=metadata,
                                   timeout=10))["code"]
        for _ in range(args.grpc_ok)
    ]
    not_found = [
        echo_outcome(lambda: unary(echo_request(fail_code=5, fail_message="no such repo"),
                                   timeout=10))["code"]
        for _ in range(args.grpc_not_found)
    ]

    async def one_websocket():
        ctx = ssl.create_default_context(cafile=args.ca)
        headers = {"x-request-id": "observe-ws"}
        async with websockets.connect(
            args.ws_url, ssl=ctx, additional_headers=headers, compression=None
        ) as ws:
            await ws.send("y" * 1000)
            return await ws.recv()

    echo = asyncio.run(one_websocket())
    print(json.dumps({"grpc_ok": ok, "grpc_not_found": not_found, "ws_echo": echo}))


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
