"""A stream that slips in as pachgate's idle GOAWAY leaves must run to its end.

pachgate closes an idle h2 connection gracefully: a GOAWAY that still admits every stream,
then a PING, and the final GOAWAY once the PING is answered. This client waits on an idle
connection for that first GOAWAY, opens a server-streaming call before it answers the
PING, and reads the call to its end, although it lasts longer than pachgate's idle and
keepalive timeouts. It prints what it observed (the GOAWAYs, the messages, grpc-status,
a reset, an early close) as one JSON object on its last line; the verdict is the Rust
test's (tests/grpc_python.rs).

Frames are written and read by hand (the h2 library refuses to open a stream once it has
seen a GOAWAY); header blocks go through the `hpack` package from PyPI.

usage: h2_goaway_race.py --port PORT --ca CA_FILE
"""

import argparse
import json
import socket
import ssl

import hpack

from grpc_checks import echo_request  # the stand-in's request, encoded by hand

from h2_frames import (ACK, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE,
                       RST_STREAM, SETTINGS, Frames, frame)

MESSAGES = 3
INTERVAL_MS = 1500



def request_message():
    body = echo_request(b"late", count=MESSAGES, interval_ms=INTERVAL_MS)
    return b"\x00" + len(body).to_bytes(4, "big") + body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()

    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", args.port), timeout=20)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    observed = {"alpn": tls.selected_alpn_protocol(), "goaways": [], "opened": False,
                "messages": 0, "grpc_status": None, "reset": None, "closed_early": False}
    if observed["alpn"] == "h2":
        run(tls, observed)
    print(json.dumps(observed))


def run(tls, observed):
    tls.sendall(PREFACE + frame(SETTINGS, 0, 0))
    frames = Frames(tls)
    decoder = hpack.Decoder()
    held_pings = []
    while observed["grpc_status"] is None:
        got = frames.next()
        if got is None:
            observed["closed_early"] = True
            return
        kind, flags, stream, payload = got
        if kind == SETTINGS and not flags & ACK:
            tls.sendall(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            if observed["opened"]:
                tls.sendall(frame(PING, ACK, 0, payload))
            else:
                held_pings.append(payload)
        elif kind == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            observed["goaways"].append(last)
            if not observed["opened"]:
                if last < 1:
                    return  # the first GOAWAY admits no stream: nothing to open
                block = hpack.Encoder().encode([
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":authority", "localhost"),
                    (":path", "/pachgate.standin.Echo/ServerStream"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ])
                tls.sendall(
                    frame(HEADERS, END_HEADERS, 1, block)
                    + frame(DATA, END_STREAM, 1, request_message())
                    + b"".join(frame(PING, ACK, 0, p) for p in held_pings)
                )
                observed["opened"] = True
                print("stream opened after the first GOAWAY", flush=True)
        elif kind == HEADERS and stream == 1:
            headers = dict(decoder.decode(payload))
            if flags & END_STREAM:
                observed["grpc_status"] = headers.get("grpc-status", "missing")
        elif kind == DATA and stream == 1:
            observed["messages"] += payload.count(b"late")
        elif kind == RST_STREAM and stream == 1:
            observed["reset"] = int.from_bytes(payload, "big")
            return


if __name__ == "__main__":
    main()
