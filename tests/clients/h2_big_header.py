"""An h2 client over TLS that sends, on one connection, a request with one very large header
(stream 1, HEADERS + CONTINUATION) and then an ordinary one (stream 3), and prints as JSON
what came back for each stream: response status, the stream's end, resets and GOAWAYs. The
verdict is the Rust test's (tests/refusals.rs); this only speaks the frames.

usage: h2_big_header.py --port PORT --ca CA_FILE --path PATH --size BYTES
"""

import argparse
import json
import socket
import ssl
import struct

import hpack

from h2_frames import (ACK, CONTINUATION, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE,
                       RST_STREAM, SETTINGS, Frames, frame)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()

    context = ssl.create_default_context(cafile=args.ca)
    context.set_alpn_protocols(["h2"])
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", args.port)),
                               server_hostname="localhost")
    sock.settimeout(10)
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    decoder.max_allowed_table_size = 65536
    decoder.max_header_list_size = 1 << 20

    def request(stream, extra):
        headers = [(":method", "GET"), (":scheme", "https"), (":path", args.path),
                   (":authority", f"localhost:{args.port}")] + extra
        block = encoder.encode(headers)
        pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)] or [b""]
        out = b""
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            kind = HEADERS if index == 0 else CONTINUATION
            flags = (END_HEADERS if last else 0) | (END_STREAM if index == 0 else 0)
            out += frame(kind, flags, stream, piece)
        return out

    sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
    sock.sendall(request(1, [("x-big", "a" * args.size)]))
    sock.sendall(request(3, [("x-small", "b")]))

    events, ended = [], set()
    frames = Frames(sock)
    try:
        while ended != {1, 3}:
            got = frames.next()
            if got is None:
                events.append({"kind": "closed"})
                break
            kind, flags, stream, payload = got
            if kind == SETTINGS and not flags & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0))
            elif kind == HEADERS:
                fields = dict(decoder.decode(payload))
                events.append({"kind": "headers", "stream": stream,
                               "status": fields.get(":status")})
            if kind in (HEADERS, 0x0) and flags & END_STREAM:  # 0x0: DATA
                events.append({"kind": "end", "stream": stream})
                ended.add(stream)
            elif kind == RST_STREAM:
                events.append({"kind": "rst", "stream": stream,
                               "code": struct.unpack(">I", payload[:4])[0]})
                ended.add(stream)
            elif kind == GOAWAY:
                events.append({"kind": "goaway", "code": struct.unpack(">I", payload[4:8])[0]})
                break
        # A reset that follows a response comes right after it: give it a moment.
        sock.settimeout(0.5)
        while True:
            got = frames.next()
            if got is None:
                break
            kind, flags, stream, payload = got
            if kind == RST_STREAM:
                events.append({"kind": "rst", "stream": stream,
                               "code": struct.unpack(">I", payload[:4])[0]})
            elif kind == GOAWAY:
                events.append({"kind": "goaway", "code": struct.unpack(">I", payload[4:8])[0]})
    except socket.timeout:
        pass
    print(json.dumps(events))


if __name__ == "__main__":
    main()
