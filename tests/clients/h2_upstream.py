"""An h2c gRPC upstream that is strict about its limits and, on some methods, misbehaves.

pachgate speaks HTTP/2 to upstreams with its own client connection. The tonic and gRPC
core servers in the other tests are well behaved; this one checks the rest:

  serve                 prints "odd-upstream listening on 127.0.0.1:PORT" and answers:
    /odd.Upstream/Slow        after 50 ms: the request's message back, and trailers saying
                              how many streams were ever open at once on the connection
                              (x-most-open) and how many arrived past its limit of 2
                              (x-over-limit), SETTINGS_MAX_CONCURRENT_STREAMS = 2
    /odd.Upstream/BigHeaders  a 40,000-byte response header (HEADERS + CONTINUATIONs), and
                              a trailer with the length of the request's x-big header
    /odd.Upstream/Uppercase   a response header with an uppercase name (malformed)
    /odd.Upstream/DataFirst   DATA before any HEADERS (malformed)
    /odd.Upstream/ResetMid    headers and one message, then RST_STREAM INTERNAL_ERROR
    /odd.Upstream/Push        a PUSH_PROMISE, which pachgate disabled: a connection error
    /odd.Upstream/Refuse      the first time a call's x-key is seen: RST_STREAM
                              REFUSED_STREAM as its headers arrive; after that, the
                              request's message back and x-arrivals (times seen) in trailers
    /odd.Upstream/GoAway      the same, refused by a GOAWAY below the stream's id instead
    /odd.Upstream/PingFlood   PINGs without end while never reading again, so pachgate's
                              acknowledgements pile up unwritten: it must end the
                              connection (ENHANCE_YOUR_CALM) instead of queueing them all
  check --target T --ca CA    runs grpcio calls through pachgate against a served upstream
                              and prints what each got as one JSON object (the verdict is
                              tests/grpc_python.rs's)

Frames are written and read by hand so the upstream can break the rules; header blocks
go through the `hpack` package from PyPI.
"""

import argparse
import json
import socket
import struct
import threading
import time
from concurrent import futures

import hpack

from h2_frames import (ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS,
                       PADDED, PING, PREFACE, PRIORITY, PUSH_PROMISE, RST_STREAM, SETTINGS,
                       WINDOW_UPDATE, Frames, frame)
MAX_STREAMS = 2
BIG = 40_000
SLICE = 16_384
# Arrivals per x-key across connections: a refused call comes back on a new one after a
# GOAWAY.
ARRIVALS = {}
ARRIVALS_LOCK = threading.Lock()
# Long enough to outlast the client's deadline if the flood were queued without a limit.
FLOOD_SECONDS = 30



def grpc_message(body):
    return b"\x00" + len(body).to_bytes(4, "big") + body


class Connection:
    def __init__(self, sock):
        self.sock = sock
        # Encoding and sending happen under one lock: the peer's HPACK table must see header
        # blocks in the order they were encoded.
        self.write_lock = threading.RLock()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.encoder = hpack.Encoder()
        self.streams = {}  # id -> {"headers": dict, "body": bytearray}
        self.open = set()
        self.most_open = 0
        self.over_limit = 0
        self.frames = Frames(sock)

    def send(self, data):
        with self.write_lock:
            self.sock.sendall(data)

    def header_frames(self, stream, fields, end_stream):
        block = self.encoder.encode(fields)
        pieces = [block[i:i + SLICE] for i in range(0, len(block), SLICE)] or [b""]
        out = b""
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            flags = END_HEADERS if last else 0
            if index == 0:
                out += frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream, piece)
            else:
                out += frame(CONTINUATION, flags, stream, piece)
        return out

    def serve(self):
        preface = b""
        while len(preface) < len(PREFACE):
            more = self.sock.recv(len(PREFACE) - len(preface))
            if not more:
                return
            preface += more
        self.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, MAX_STREAMS)))
        block, block_stream, block_end = b"", 0, False
        while True:
            got = self.frames.next()
            if got is None:
                return
            kind, flags, stream, payload = got
            if kind == SETTINGS and not flags & ACK:
                self.send(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.send(frame(PING, ACK, 0, payload))
            elif kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                block, block_stream, block_end = payload, stream, bool(flags & END_STREAM)
                if flags & END_HEADERS:
                    self.headers_done(block_stream, block, block_end)
            elif kind == CONTINUATION:
                block += payload
                if flags & END_HEADERS:
                    self.headers_done(block_stream, block, block_end)
            elif kind == DATA:
                # The connection's window comes back even for a refused stream's DATA.
                if payload:
                    self.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))))
                if stream in self.streams:
                    self.streams[stream]["body"] += payload
                    if flags & END_STREAM:
                        self.respond(stream)
            elif kind == RST_STREAM:
                self.streams.pop(stream, None)
                self.open.discard(stream)
            elif kind == GOAWAY:
                return

    def headers_done(self, stream, block, end_stream):
        fields = {name.decode() if isinstance(name, bytes) else name:
                  value.decode() if isinstance(value, bytes) else value
                  for name, value in self.decoder.decode(block, raw=True)}
        if stream in self.streams:
            return  # the request's trailers; gRPC requests have none
        if self.refused(stream, fields):
            return
        if len(self.open) >= MAX_STREAMS:
            self.over_limit += 1
        self.open.add(stream)
        self.most_open = max(self.most_open, len(self.open))
        self.streams[stream] = {"headers": fields, "body": bytearray()}
        if end_stream:
            self.respond(stream)

    def refused(self, stream, fields):
        """Refuses a /Refuse or /GoAway call the first time its x-key arrives."""
        path = fields.get(":path", "")
        if not (path.endswith("/Refuse") or path.endswith("/GoAway")):
            return False
        with ARRIVALS_LOCK:
            key = (path, fields.get("x-key"))
            ARRIVALS[key] = ARRIVALS.get(key, 0) + 1
            fields["x-arrivals"] = str(ARRIVALS[key])
            if ARRIVALS[key] > 1:
                return False
        if path.endswith("/Refuse"):
            self.send(frame(RST_STREAM, 0, stream, struct.pack(">I", 0x7)))
        else:
            # Nothing from this stream on was processed; the connection takes no more.
            self.send(frame(GOAWAY, 0, 0, struct.pack(">II", max(stream - 2, 0), 0)))
        return True

    def finish(self, stream):
        self.open.discard(stream)
        self.streams.pop(stream, None)

    def respond(self, stream):
        request = self.streams[stream]
        path = request["headers"].get(":path", "")
        ok_head = [(":status", "200"), ("content-type", "application/grpc")]
        if path.endswith("/PingFlood"):
            self.flood_pings()
            return
        if path.endswith("/Refuse") or path.endswith("/GoAway"):
            trailers = [("grpc-status", "0"), ("x-arrivals", request["headers"]["x-arrivals"])]
            with self.write_lock:
                self.finish(stream)
                self.send(self.header_frames(stream, ok_head, False)
                          + frame(DATA, 0, stream, bytes(request["body"]))
                          + self.header_frames(stream, trailers, True))
            return
        if path.endswith("/Slow"):
            body = bytes(request["body"])

            def later():
                trailers = [("grpc-status", "0"), ("x-most-open", str(self.most_open)),
                            ("x-over-limit", str(self.over_limit))]
                with self.write_lock:
                    out = (self.header_frames(stream, ok_head, False)
                           + frame(DATA, 0, stream, body)
                           + self.header_frames(stream, trailers, True))
                    self.finish(stream)
                    self.send(out)

            threading.Timer(0.05, later).start()
            return
        with self.write_lock:
            self.finish(stream)
            self.send(self.misbehave(stream, path, request, ok_head))

    def flood_pings(self):
        """Runs on the reading thread, so nothing is read from here on: pachgate's ACKs
        fill the socket buffers and then its queue. Ends when pachgate closes the
        connection (the send fails) or after FLOOD_SECONDS."""
        batch = b"".join(frame(PING, 0, 0, i.to_bytes(8, "big")) for i in range(4096))
        deadline = time.monotonic() + FLOOD_SECONDS
        while time.monotonic() < deadline:
            self.send(batch)  # raises OSError once pachgate has closed the connection

    def misbehave(self, stream, path, request, ok_head):
        if path.endswith("/BigHeaders"):
            big = len(request["headers"].get("x-big", ""))
            out = (self.header_frames(stream, ok_head + [("x-big", "b" * BIG)], False)
                   + frame(DATA, 0, stream, grpc_message(b""))
                   + self.header_frames(stream, [("grpc-status", "0"),
                                                 ("x-request-big-length", str(big))], True))
        elif path.endswith("/Uppercase"):
            out = self.header_frames(stream, ok_head + [("X-Upper", "1")], False)
        elif path.endswith("/DataFirst"):
            out = frame(DATA, 0, stream, grpc_message(b"early"))
        elif path.endswith("/ResetMid"):
            out = (self.header_frames(stream, ok_head, False)
                   + frame(DATA, 0, stream, grpc_message(b"one"))
                   + frame(RST_STREAM, 0, stream, struct.pack(">I", 0x2)))
        elif path.endswith("/Push"):
            promise = struct.pack(">I", stream + 1) + self.encoder.encode(
                [(":method", "GET"), (":scheme", "http"), (":path", "/pushed"),
                 (":authority", "odd")])
            out = frame(PUSH_PROMISE, END_HEADERS, stream, promise)
        else:
            out = self.header_frames(stream, ok_head + [("grpc-status", "12")], True)
        return out


def serve():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(f"odd-upstream listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=lambda s=sock: serve_quietly(s), daemon=True).start()


def serve_quietly(sock):
    try:
        Connection(sock).serve()
    except OSError:
        pass
    finally:
        sock.close()


def check(args):
    import grpc

    creds = grpc.ssl_channel_credentials(open(args.ca, "rb").read())
    options = [("grpc.max_metadata_size", 1 << 20)]
    observed = {"rounds": {}, "resent": {}, "violations": {}}
    with grpc.secure_channel(args.target, creds, options=options) as channel:
        def call(name):
            return channel.unary_unary("/odd.Upstream/" + name,
                                       request_serializer=lambda x: x,
                                       response_deserializer=lambda x: x)

        def error(e):
            return {"code": e.code().name, "details": e.details()}

        def slow_calls(count, why):
            """`count` Slow calls at once: each one's reply and what the upstream counted."""
            with futures.ThreadPoolExecutor(count) as pool:
                calls = [pool.submit(call("Slow").with_call, b"m%d" % i, timeout=20)
                         for i in range(count)]
                results = []
                for done in calls:
                    try:
                        reply, outcome = done.result()
                    except grpc.RpcError as e:
                        results.append(error(e))
                        continue
                    trailers = dict(outcome.trailing_metadata())
                    results.append({"code": "OK", "reply": reply.decode("latin-1"),
                                    "over_limit": trailers.get("x-over-limit"),
                                    "most_open": int(trailers.get("x-most-open", "-1"))})
            observed["rounds"][why] = results

        # Twelve calls at once against a limit of two.
        slow_calls(12, "under the stream limit")

        reply, outcome = call("BigHeaders").with_call(
            b"", metadata=[("x-big", "a" * BIG)], timeout=20)
        head = dict(outcome.initial_metadata())
        trailers = dict(outcome.trailing_metadata())
        observed["big_headers"] = {
            "sent": BIG,
            "response_header_length": len(head.get("x-big", "")),
            "response_header_letters": "".join(sorted(set(head.get("x-big", "")))),
            "request_header_length_seen": trailers.get("x-request-big-length"),
        }

        # Refused unprocessed (RST_STREAM REFUSED_STREAM, or GOAWAY below the stream).
        for name in ["Refuse", "GoAway"]:
            message = b"sent twice, answered once: " + name.encode()
            try:
                reply, outcome = call(name).with_call(message, metadata=[("x-key", name)],
                                                      timeout=20)
                trailers = dict(outcome.trailing_metadata())
                observed["resent"][name] = {"code": "OK", "reply": reply.decode("latin-1"),
                                            "arrivals": trailers.get("x-arrivals")}
            except grpc.RpcError as e:
                observed["resent"][name] = error(e)
            slow_calls(3, f"after {name}")
        # A body over pachgate's resend limit (64 KiB), refused.
        try:
            call("Refuse")(b"x" * 100_000, metadata=[("x-key", "big")], timeout=20)
            observed["refused_100k"] = {"code": "OK"}
        except grpc.RpcError as e:
            observed["refused_100k"] = error(e)
        slow_calls(3, "after the refused 100 KB call")

        for name in ["Uppercase", "DataFirst", "ResetMid", "Push", "PingFlood"]:
            try:
                call(name)(b"", timeout=20)
                observed["violations"][name] = {"code": "OK"}
            except grpc.RpcError as e:
                observed["violations"][name] = error(e)
            # Whatever one stream (or connection) did, the next calls.
            slow_calls(3, f"after {name}")
    print(json.dumps(observed))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    checking = sub.add_parser("check")
    checking.add_argument("--target", required=True)
    checking.add_argument("--ca", required=True)
    args = parser.parse_args()
    if args.command == "serve":
        serve()
    else:
        check(args)


if __name__ == "__main__":
    main()
