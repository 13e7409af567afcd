"""gRPC checks through pachgate with the official Python gRPC implementation (grpcio).

Each check talks to the stand-in pachd's echo service (pachgate.standin.Echo) through
pachgate over TLS and prints what it observed as one JSON object on its last line of
stdout; the verdict is the Rust test's (tests/common/grpc_checks.rs). It exits non-zero
only when it could not run.
Messages are encoded by hand (field numbers as in crates/standins/src/messages.rs) so no
generated code or protoc is needed.

usage: grpc_checks.py --target localhost:PORT --ca CA_FILE CHECK
"""

import argparse
import json
import time

import grpc

ECHO = "/pachgate.standin.Echo/"
MAX = 256 * 1024 * 1024


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(tag, n):
    return varint(tag << 3) + varint(n) if n else b""


def field_bytes(tag, data):
    return varint(tag << 3 | 2) + varint(len(data)) + data if data else b""


def echo_request(payload=b"", count=0, size=0, interval_ms=0, fail_code=0, fail_message=""):
    return (
        field_bytes(1, payload)
        + field_varint(2, count)
        + field_varint(3, size)
        + field_varint(4, interval_ms)
        + field_varint(5, fail_code)
        + field_bytes(6, fail_message.encode())
    )


def read_varint(data, i):
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def echo_response(data):
    """-> dict(payload=bytes, sequence=int, total_bytes=int)"""
    out = {"payload": b"", "sequence": 0, "total_bytes": 0, "who_am_i_calls": 0,
           "unary_calls": 0}
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        tag, wire = key >> 3, key & 7
        if wire == 2:
            n, i = read_varint(data, i)
            value = data[i : i + n]
            i += n
        elif wire == 0:
            value, i = read_varint(data, i)
        else:
            raise ValueError(f"unexpected wire type {wire}")
        name = {1: "payload", 2: "sequence", 3: "total_bytes", 4: "who_am_i_calls",
                5: "unary_calls"}.get(tag)
        if name:
            out[name] = value
    return out


def ident(x):
    return x


def channel(args):
    options = [
        ("grpc.max_send_message_length", MAX),
        ("grpc.max_receive_message_length", MAX),
    ]
    if args.plaintext:
        return grpc.insecure_channel(args.target, options=options)
    creds = grpc.ssl_channel_credentials(open(args.ca, "rb").read())
    return grpc.secure_channel(args.target, creds, options=options)


def method(ch, kind, name):
    factory = {
        "unary": ch.unary_unary,
        "server": ch.unary_stream,
        "client": ch.stream_unary,
        "bidi": ch.stream_stream,
    }[kind]
    return factory(ECHO + name, request_serializer=ident, response_deserializer=ident)


def text(data):
    """Bytes as a JSON string, one character per byte."""
    return data.decode("latin-1")


def outcome(call):
    """Runs call(): {"code": "OK" or the status name, "details": ..., "reply": ...}."""
    try:
        reply = call()
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    return {"code": "OK", "details": None, "reply": text(reply)}


def echo_outcome(call):
    """outcome() of an Echo call, its reply's payload decoded."""
    try:
        reply = call()
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    return {"code": "OK", "details": None, "payload": text(echo_response(reply)["payload"])}


def first_difference(got, want):
    """The first offset where two byte strings differ (None when equal)."""
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))


def check_large(args):
    """A 64 MiB message up and a 64 MiB message down, byte for byte."""
    size = 64 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    with channel(args) as ch:
        reply = echo_response(method(ch, "unary", "Unary")(echo_request(payload), timeout=120))
    return {
        "sent_bytes": size,
        "server_saw_bytes": reply["total_bytes"],
        "reply_bytes": len(reply["payload"]),
        "first_difference": first_difference(reply["payload"], payload),
    }


def check_bidi_100k(args):
    """100,000 messages on one bidirectional stream, each answered in order."""
    n = 100_000
    requests = (echo_request(i.to_bytes(4, "big")) for i in range(n))
    seen = 0
    out_of_sequence = []
    payload_differs = []
    with channel(args) as ch:
        for raw in method(ch, "bidi", "Bidi")(requests, timeout=300):
            reply = echo_response(raw)
            if reply["sequence"] != seen and len(out_of_sequence) < 10:
                out_of_sequence.append([seen, reply["sequence"]])
            if reply["payload"] != seen.to_bytes(4, "big") and len(payload_differs) < 10:
                payload_differs.append(seen)
            seen += 1
    return {
        "sent": n,
        "replies": seen,
        "out_of_sequence": out_of_sequence,
        "payload_differs": payload_differs,
    }


def check_client_stream(args):
    """Client streaming: the upstream sees every message and byte."""
    with channel(args) as ch:
        reply = echo_response(
            method(ch, "client", "ClientStream")(
                (echo_request(b"x" * 1000) for _ in range(500)), timeout=60
            )
        )
    return {"messages": reply["sequence"], "bytes": reply["total_bytes"]}


def check_many_concurrent(args):
    """4 channels x 500 unary calls in flight at once, each answered with its own payload,
    while a server stream on one of the channels keeps flowing."""
    channels = [channel(args) for _ in range(4)]
    try:
        stream = method(channels[0], "server", "ServerStream")(
            echo_request(b"s", count=2000, size=64), timeout=60
        )
        calls = []
        for n in range(2000):
            payload = n.to_bytes(4, "big") * (1 + n % 64)
            call = method(channels[n % 4], "unary", "Unary").future(
                echo_request(payload), timeout=60
            )
            calls.append((payload, call))
        mixed_up = [
            n for n, (payload, call) in enumerate(calls)
            if echo_response(call.result())["payload"] != payload
        ]
        streamed = sum(1 for _ in stream)
    finally:
        for ch in channels:
            ch.close()
    return {"calls": len(calls), "mixed_up": mixed_up[:10], "streamed": streamed}


def check_deadline(args):
    """A deadline that expires mid-stream ends the call with DEADLINE_EXCEEDED after the
    messages sent before it, instead of hanging or being cut earlier."""
    received = 0
    code = "OK"
    start = time.monotonic()
    with channel(args) as ch:
        try:
            for _ in method(ch, "server", "ServerStream")(
                echo_request(b"tick", count=1000, interval_ms=100), timeout=1.5
            ):
                received += 1
        except grpc.RpcError as e:
            code = e.code().name
    return {"code": code, "received": received, "seconds": time.monotonic() - start}


def error_report(e):
    trailers = dict(e.trailing_metadata() or ())
    details_bin = trailers.get("grpc-status-details-bin")
    return {
        "code": e.code().name,
        "details": e.details(),
        "x-standin-trailer": trailers.get("x-standin-trailer"),
        "grpc-status-details-bin": text(details_bin) if details_bin is not None else None,
    }


def check_trailers(args):
    """Trailers after data, and trailers-only errors: status, message, details (binary
    metadata) and custom trailing metadata as they arrived."""
    with channel(args) as ch:
        call = method(ch, "server", "ServerStream")(
            echo_request(b"m", count=3, fail_code=9, fail_message="after three messages: ü"),
            timeout=30,
        )
        received = 0
        try:
            for _ in call:
                received += 1
            after_data = {"code": "OK"}
        except grpc.RpcError as e:
            after_data = error_report(e)
        after_data["messages"] = received
        # Trailers-only: the error comes in the only HEADERS frame.
        try:
            method(ch, "unary", "Unary")(
                echo_request(fail_code=5, fail_message="no such repo"), timeout=30
            )
            trailers_only = {"code": "OK"}
        except grpc.RpcError as e:
            trailers_only = error_report(e)
    return {"after_data": after_data, "trailers_only": trailers_only}


def check_pachd_methods(args):
    """pachd's own paths route to the stand-in: GetVersion and WhoAmI semantics."""
    with channel(args) as ch:
        version = ch.unary_unary(
            "/versionpb_v2.API/GetVersion", request_serializer=ident, response_deserializer=ident
        )
        whoami = ch.unary_unary(
            "/auth_v2.API/WhoAmI", request_serializer=ident, response_deserializer=ident
        )
        return {
            "version": outcome(lambda: version(b"", timeout=30)),
            "who_am_i": outcome(
                lambda: whoami(b"", metadata=[("authn-token", "demo-token")], timeout=30)
            ),
            "who_am_i_without_token": outcome(lambda: whoami(b"", timeout=30)),
        }


def unary_call(args, request, timeout):
    """One Echo/Unary call's outcome."""
    with channel(args) as ch:
        return echo_outcome(lambda: method(ch, "unary", "Unary")(request, timeout=timeout))


def check_unavailable(args):
    """The upstream is down: what a call with a generous deadline gets (a hang would show
    up as DEADLINE_EXCEEDED)."""
    return unary_call(args, echo_request(b"x"), 20)


def check_unrouted(args):
    """No route for gRPC: what a call gets."""
    return unary_call(args, echo_request(b"x"), 20)


def check_upstream_timeout(args):
    """The upstream answers slower than the upstream's response_timeout, while the
    client's own deadline is far away: what the call gets."""
    return unary_call(args, echo_request(b"x", interval_ms=5000), 60)


def check_cancel(args):
    """The client cancels a server stream mid-way: how the call ended, and how many
    cancelled streams the stand-in counted (Echo/Stats) within ~10 s."""
    with channel(args) as ch:
        stats = method(ch, "unary", "Stats")
        before = echo_response(stats(b"", timeout=10))["sequence"]
        call = method(ch, "server", "ServerStream")(
            echo_request(b"tick", count=100000, interval_ms=20), timeout=60
        )
        received = 0
        for _ in call:
            received += 1
            if received == 3:
                call.cancel()
                break
        after = before
        for _ in range(100):  # up to ~10 s for the reset to travel
            after = echo_response(stats(b"", timeout=10))["sequence"]
            if after > before:
                break
            time.sleep(0.1)
    return {"code": call.code().name, "received": received, "upstream_cancelled": after - before}


def check_upstream_dies(args):
    """The upstream dies mid-stream (the test kills it after "streaming" is printed): how
    the client's stream ended."""
    received = 0
    code = "OK"
    start = time.monotonic()
    with channel(args) as ch:
        call = method(ch, "server", "ServerStream")(
            echo_request(b"tick", count=100000, interval_ms=20), timeout=60
        )
        try:
            for _ in call:
                received += 1
                if received == 3:
                    print("streaming", flush=True)
        except grpc.RpcError as e:
            code = e.code().name
    return {"received": received, "code": code, "seconds": time.monotonic() - start}


def check_auth_gate(args):
    """auth = "pachyderm": public methods pass without a token, the rest need one that
    pachd's WhoAmI accepts; answers are cached (one WhoAmI for many calls)."""
    good = [("authn-token", "demo-token")]
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        version = ch.unary_unary(
            "/versionpb_v2.API/GetVersion", request_serializer=ident, response_deserializer=ident
        )
        bad_path = ch.unary_unary("/pachgate.standin.Echo/Unary/x",
                                  request_serializer=ident, response_deserializer=ident)
        stats = method(ch, "unary", "Stats")

        def counters():
            return echo_response(stats(b"", metadata=good, timeout=10))

        report = {
            "version_without_token": outcome(lambda: version(b"", timeout=10)),
            "no_token": echo_outcome(lambda: unary(echo_request(b"x"), timeout=10)),
            "bad_token": echo_outcome(lambda: unary(
                echo_request(b"x"), metadata=[("authn-token", "wrong")], timeout=10)),
            "two_tokens": echo_outcome(lambda: unary(
                echo_request(b"x"), metadata=good + [("authn-token", "wrong")], timeout=10)),
            "bad_path": outcome(lambda: bad_path(echo_request(b"x"), metadata=good, timeout=10)),
        }

        # A denied call never reaches the stand-in.
        before = counters()
        report["denied"] = echo_outcome(lambda: unary(echo_request(b"x"), timeout=10))
        report["denied_reached_pachd"] = counters()["unary_calls"] - before["unary_calls"]

        # 1000 calls with one token: no WhoAmI beyond the first (already made by Stats).
        before = counters()
        payloads = [echo_outcome(lambda: unary(echo_request(b"ok"), metadata=good, timeout=10))
                    ["payload"] for _ in range(1000)]
        after = counters()
        report["thousand_calls"] = {
            "not_echoed": sum(1 for p in payloads if p != "ok"),
            "reached_pachd": after["unary_calls"] - before["unary_calls"],
            "who_am_i_calls": after["who_am_i_calls"] - before["who_am_i_calls"],
        }

        # 50 concurrent first calls with a token not seen before: one WhoAmI between them.
        before = counters()
        second = [("authn-token", "demo-token-2")]
        futures = [unary.future(echo_request(b"c"), metadata=second, timeout=20) for _ in range(50)]
        payloads = [echo_outcome(f.result)["payload"] for f in futures]
        after = counters()
        report["concurrent_first_calls"] = {
            "not_echoed": sum(1 for p in payloads if p != "c"),
            "who_am_i_calls": after["who_am_i_calls"] - before["who_am_i_calls"],
        }
    return report


BYPASS_TRICKS = [
    "/versionpb_v2.API/GetVersion/../../pachgate.standin.Echo/Unary",
    "/versionpb_v2.API/GetVersion/%2e%2e/%2e%2e/pachgate.standin.Echo/Unary",
    "//pachgate.standin.Echo/Unary",
    "/pachgate.standin.Echo/./Unary",
    "/pachgate.standin.Echo//Unary",
    "/pachgate.standin.Echo%2FUnary",
    "/pachgate.standin.Echo/%55nary",
    "/pachgate.standin.Echo/Unary?x=/versionpb_v2.API/GetVersion",
    "/versionpb_v2.API/GetVersion%2F..%2F..%2Fpachgate.standin.Echo%2FUnary",
]


def check_auth_bypass(args):
    """Path and header tricks against a protected method: what each got, and how many
    reached pachd."""
    good = [("authn-token", "demo-token")]
    with channel(args) as ch:
        stats = method(ch, "unary", "Stats")
        before = echo_response(stats(b"", metadata=good, timeout=10))["unary_calls"]
        paths = {}
        for path in BYPASS_TRICKS:
            call = ch.unary_unary(path, request_serializer=ident, response_deserializer=ident)
            paths[path] = outcome(lambda: call(echo_request(b"x"), timeout=10))["code"]
        unary = method(ch, "unary", "Unary")
        tokens = {}
        for metadata, why in [
            ([("authn-token", "")], "empty token"),
            ([("authn-token", "demo-token"), ("authn-token", "demo-token")], "token twice"),
            ([("authn-token", "wrong"), ("authn-token", "demo-token")], "bad then good token"),
        ]:
            tokens[why] = echo_outcome(
                lambda: unary(echo_request(b"x"), metadata=metadata, timeout=10))["code"]
        after = echo_response(stats(b"", metadata=good, timeout=10))["unary_calls"]
    return {"paths": paths, "tokens": tokens, "reached_pachd": after - before}


def check_auth_expiry(args):
    """A token pachd says expires soon, while valid and once it has expired, although
    cache_ttl (60 s) has not run out."""
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        short = [("authn-token", "short-lived-token")]
        valid = echo_outcome(lambda: unary(echo_request(b"s"), metadata=short, timeout=10))
        time.sleep(7)  # the stand-in's short-lived token lives 6 s from its start
        expired = echo_outcome(lambda: unary(echo_request(b"s"), metadata=short, timeout=10))
    return {"while_valid": valid, "expired": expired}


def check_auth_not_active(args):
    """pachd without auth: what a call with a token gets."""
    return unary_call_with(args, [("authn-token", "t")], b"x")


def unary_call_with(args, metadata, payload):
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        return echo_outcome(lambda: unary(echo_request(payload), metadata=metadata, timeout=20))


def check_auth_allow_when_disabled(args):
    """when_auth_disabled = "allow" before a pachd without auth: calls with and without a
    token."""
    return {
        "with_token": unary_call_with(args, [("authn-token", "t")], b"open"),
        "without_token": unary_call_with(args, [], b"no token"),
    }


def check_auth_unavailable(args):
    """pachd cannot be asked about the token: what a call with one gets."""
    return unary_call_with(args, [("authn-token", "demo-token")], b"x")


def check_auth_rate_limit(args):
    """Four calls with different bad tokens, in a row: what each got."""
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        return {"calls": [
            echo_outcome(lambda: unary(echo_request(b"x"),
                                       metadata=[("authn-token", f"guess-{n}")], timeout=10))
            for n in range(4)
        ]}


def check_tls_upstream_wrong_ca(args):
    """The upstream's certificate does not verify: what a call gets."""
    with channel(args) as ch:
        empty = ch.unary_unary("/grpc.testing.TestService/EmptyCall",
                               request_serializer=ident, response_deserializer=ident)
        return outcome(lambda: empty(b"", timeout=20))


def check_stream_survives_drain(args):
    """A 3-second server stream, started before pachgate is told to drain: how much of it
    arrived, in order."""
    received = 0
    out_of_order = []
    code = "OK"
    with channel(args) as ch:
        try:
            for raw in method(ch, "server", "ServerStream")(
                echo_request(b"tick", count=30, interval_ms=100), timeout=30
            ):
                if echo_response(raw)["sequence"] != received:
                    out_of_order.append(received)
                received += 1
                if received == 3:
                    print("streaming", flush=True)
        except grpc.RpcError as e:
            code = e.code().name
    return {"received": received, "out_of_order": out_of_order, "code": code}


def check_idle_timeout(args):
    """Run with limits.idle_timeout = 2s. A server stream whose messages come 2.5 s apart
    is a call in flight, however quiet ("first message" is printed when the first reply
    arrives, past the idle timeout, for the caller to look at pachgate's metrics while the
    stream still runs). The connection then carries no call for 4 s, and the channel makes
    one more call."""
    with channel(args) as ch:
        start = time.monotonic()
        replies = 0
        for _ in method(ch, "server", "ServerStream")(
            echo_request(b"quiet", count=2, interval_ms=2500), timeout=30
        ):
            replies += 1
            if replies == 1:
                print("first message", flush=True)
        took = time.monotonic() - start
        time.sleep(4)
        after = echo_outcome(
            lambda: method(ch, "unary", "Unary")(echo_request(b"after idle"), timeout=10))
    return {"replies": replies, "seconds": took, "after_idle": after}


CHECKS = {
    "idle-timeout": check_idle_timeout,
    "stream-survives-drain": check_stream_survives_drain,
    "tls-upstream-wrong-ca": check_tls_upstream_wrong_ca,
    "auth-gate": check_auth_gate,
    "auth-rate-limit": check_auth_rate_limit,
    "auth-bypass": check_auth_bypass,
    "auth-expiry": check_auth_expiry,
    "auth-unavailable": check_auth_unavailable,
    "auth-not-active": check_auth_not_active,
    "auth-allow-when-disabled": check_auth_allow_when_disabled,
    "upstream-dies": check_upstream_dies,
    "cancel": check_cancel,
    "large": check_large,
    "bidi-100k": check_bidi_100k,
    "client-stream": check_client_stream,
    "many-concurrent": check_many_concurrent,
    "deadline": check_deadline,
    "trailers": check_trailers,
    "pachd-methods": check_pachd_methods,
    "unavailable": check_unavailable,
    "unrouted": check_unrouted,
    "upstream-timeout": check_upstream_timeout,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--plaintext", action="store_true", help="h2c instead of TLS")
    parser.add_argument("check", choices=sorted(CHECKS))
    args = parser.parse_args()
    print(json.dumps({"check": args.check, "observed": CHECKS[args.check](args)}), flush=True)


if __name__ == "__main__":
    main()
