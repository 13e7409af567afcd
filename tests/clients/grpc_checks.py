"""gRPC checks through pachgate with the official Python gRPC implementation (grpcio).

Each check talks to the stand-in pachd's echo service (pachgate.standin.Echo) through
pachgate over TLS and exits non-zero with a message when behaviour is wrong.
Messages are encoded by hand (field numbers as in crates/standins/src/messages.rs) so no
generated code or protoc is needed.

usage: grpc_checks.py --target localhost:PORT --ca CA_FILE CHECK
"""

import argparse
import sys
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


def expect(condition, message):
    if not condition:
        print("FAIL: " + message, file=sys.stderr)
        sys.exit(1)


def check_large(args):
    """A 64 MiB message up and a 64 MiB message down, byte for byte."""
    size = 64 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    with channel(args) as ch:
        reply = echo_response(method(ch, "unary", "Unary")(echo_request(payload), timeout=120))
    expect(reply["total_bytes"] == size, f"server saw {reply['total_bytes']} bytes, sent {size}")
    expect(reply["payload"] == payload, "64 MiB echo came back different")


def check_bidi_100k(args):
    """100,000 messages on one bidirectional stream, each answered in order."""
    n = 100_000
    requests = (echo_request(i.to_bytes(4, "big")) for i in range(n))
    seen = 0
    with channel(args) as ch:
        for raw in method(ch, "bidi", "Bidi")(requests, timeout=300):
            reply = echo_response(raw)
            expect(reply["sequence"] == seen, f"reply {seen} has sequence {reply['sequence']}")
            expect(reply["payload"] == seen.to_bytes(4, "big"), f"reply {seen} payload differs")
            seen += 1
    expect(seen == n, f"got {seen} replies for {n} messages")


def check_client_stream(args):
    """Client streaming: the upstream sees every message and byte."""
    with channel(args) as ch:
        reply = echo_response(
            method(ch, "client", "ClientStream")(
                (echo_request(b"x" * 1000) for _ in range(500)), timeout=60
            )
        )
    expect(reply["sequence"] == 500, f"upstream counted {reply['sequence']} messages, want 500")
    expect(reply["total_bytes"] == 500_000, f"upstream counted {reply['total_bytes']} bytes")


def check_many_concurrent(args):
    """4 channels × 500 unary calls in flight at once, each answered with its own payload,
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
        for n, (payload, call) in enumerate(calls):
            reply = echo_response(call.result())
            expect(reply["payload"] == payload, f"call {n} got another call's payload")
        streamed = sum(1 for _ in stream)
        expect(streamed == 2000, f"server stream delivered {streamed} of 2000 messages")
    finally:
        for ch in channels:
            ch.close()


def check_deadline(args):
    """A deadline that expires mid-stream ends the call with DEADLINE_EXCEEDED after the
    messages sent before it, instead of hanging or being cut earlier."""
    received = 0
    code = None
    start = time.monotonic()
    with channel(args) as ch:
        try:
            for _ in method(ch, "server", "ServerStream")(
                echo_request(b"tick", count=1000, interval_ms=100), timeout=1.5
            ):
                received += 1
        except grpc.RpcError as e:
            code = e.code()
    elapsed = time.monotonic() - start
    expect(code == grpc.StatusCode.DEADLINE_EXCEEDED, f"status {code}, want DEADLINE_EXCEEDED")
    expect(received >= 3, f"only {received} messages before the deadline")
    expect(received < 1000, "the stream was not cut by the deadline")
    expect(elapsed < 30, f"the call took {elapsed:.1f}s to end")


def check_trailers(args):
    """Trailers after data, and trailers-only errors: status, message, details (binary
    metadata) and custom trailing metadata arrive intact."""
    with channel(args) as ch:
        call = method(ch, "server", "ServerStream")(
            echo_request(b"m", count=3, fail_code=9, fail_message="after three messages: ü"),
            timeout=30,
        )
        received = 0
        try:
            for _ in call:
                received += 1
            expect(False, "stream ended without the requested error")
        except grpc.RpcError as e:
            expect(received == 3, f"{received} messages before the status, want 3")
            expect(e.code() == grpc.StatusCode.FAILED_PRECONDITION, f"code {e.code()}")
            expect(e.details() == "after three messages: ü", f"details {e.details()!r}")
            trailers = dict(e.trailing_metadata())
            expect(trailers.get("x-standin-trailer") == "kept", f"trailers {trailers}")
            expect(
                trailers.get("grpc-status-details-bin") == b"standin-status-details",
                f"status details {trailers.get('grpc-status-details-bin')!r}",
            )
        # Trailers-only: the error comes in the only HEADERS frame.
        try:
            method(ch, "unary", "Unary")(
                echo_request(fail_code=5, fail_message="no such repo"), timeout=30
            )
            expect(False, "unary call did not fail")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.NOT_FOUND, f"code {e.code()}")
            expect(e.details() == "no such repo", f"details {e.details()!r}")
            trailers = dict(e.trailing_metadata())
            expect(trailers.get("x-standin-trailer") == "kept", f"trailers {trailers}")


def check_pachd_methods(args):
    """pachd's own paths route to the stand-in: GetVersion and WhoAmI semantics."""
    with channel(args) as ch:
        version = ch.unary_unary(
            "/versionpb_v2.API/GetVersion", request_serializer=ident, response_deserializer=ident
        )(b"", timeout=30)
        expect(version[:2] == b"\x08\x02", f"version reply {version!r} does not say major 2")
        whoami = ch.unary_unary(
            "/auth_v2.API/WhoAmI", request_serializer=ident, response_deserializer=ident
        )
        reply = whoami(b"", metadata=[("authn-token", "demo-token")], timeout=30)
        expect(b"robot:demo" in reply, f"WhoAmI reply {reply!r}")
        try:
            whoami(b"", timeout=30)
            expect(False, "WhoAmI without a token succeeded")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"code {e.code()}")
            expect("no authentication token" in e.details(), f"details {e.details()!r}")


def check_unavailable(args):
    """The upstream is down: the caller gets UNAVAILABLE from pachgate, well before its own
    generous deadline (a hang would show up as DEADLINE_EXCEEDED)."""
    with channel(args) as ch:
        try:
            method(ch, "unary", "Unary")(echo_request(b"x"), timeout=20)
            expect(False, "call to a down upstream succeeded")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.UNAVAILABLE, f"code {e.code()}, want UNAVAILABLE")
            expect("pachgate" in e.details(), f"details {e.details()!r} do not name pachgate")


def check_unrouted(args):
    """No route for gRPC: UNIMPLEMENTED, not an HTML page."""
    with channel(args) as ch:
        try:
            method(ch, "unary", "Unary")(echo_request(b"x"), timeout=20)
            expect(False, "unrouted call succeeded")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.UNIMPLEMENTED, f"code {e.code()}")


def check_upstream_timeout(args):
    """The upstream answers slower than the upstream's response_timeout: DEADLINE_EXCEEDED
    from pachgate (status 4), while the client's own deadline is far away."""
    with channel(args) as ch:
        try:
            method(ch, "unary", "Unary")(echo_request(b"x", interval_ms=5000), timeout=60)
            expect(False, "slow call succeeded")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"code {e.code()}")
            expect("pachgate" in (e.details() or ""), f"details {e.details()!r}")


def check_cancel(args):
    """The client cancels a server stream mid-way: pachgate must reset the upstream stream,
    so the stand-in sees its client go away (counted by Echo/Stats)."""
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
        expect(call.code() == grpc.StatusCode.CANCELLED, f"call ended with {call.code()}")
        after = before
        for _ in range(100):  # up to ~10 s for the reset to travel
            after = echo_response(stats(b"", timeout=10))["sequence"]
            if after > before:
                break
            time.sleep(0.1)
        expect(after == before + 1, f"upstream saw {after - before} cancelled streams, want 1")


def check_upstream_dies(args):
    """The upstream dies mid-stream (the test kills it after "streaming" is printed): the
    client's stream must end with an error, promptly, not hang until its deadline and not
    look like a clean end."""
    received = 0
    code = None
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
            code = e.code()
    expect(received >= 3, f"only {received} messages before the upstream died")
    expect(code is not None, "the stream ended cleanly although the upstream died")
    expect(
        code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED),
        f"stream ended with {code}",
    )
    print(f"stream ended with {code.name}")


def expect_code(call, code, phrase=None):
    """Runs call(); it must fail with `code` (and `phrase` in the details)."""
    try:
        call()
    except grpc.RpcError as e:
        expect(e.code() == code, f"code {e.code()} ({e.details()!r}), want {code}")
        if phrase:
            expect(phrase in (e.details() or ""), f"details {e.details()!r} lack {phrase!r}")
        return e
    expect(False, f"call succeeded, want {code}")


def check_auth_gate(args):
    """auth = "pachyderm": public methods pass without a token, the rest need one that
    pachd's WhoAmI accepts; answers are cached (one WhoAmI for many calls)."""
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        version = ch.unary_unary(
            "/versionpb_v2.API/GetVersion", request_serializer=ident, response_deserializer=ident
        )
        # Public: no token needed.
        expect(version(b"", timeout=10)[:2] == b"\x08\x02", "GetVersion without a token failed")
        # Protected without a token: pachd's wording for a missing token.
        expect_code(lambda: unary(echo_request(b"x"), timeout=10),
                    grpc.StatusCode.UNAUTHENTICATED, "no authentication token")
        # A bad token: pachd's own message comes back.
        expect_code(lambda: unary(echo_request(b"x"), metadata=[("authn-token", "wrong")], timeout=10),
                    grpc.StatusCode.UNAUTHENTICATED, "corrupted or has expired")
        # Two authn-token values: refused, whatever they are.
        expect_code(lambda: unary(echo_request(b"x"), metadata=[("authn-token", "demo-token"),
                                                                 ("authn-token", "wrong")], timeout=10),
                    grpc.StatusCode.UNAUTHENTICATED, "more than one")
        # A malformed method path is refused, not forwarded.
        bad_path = ch.unary_unary("/pachgate.standin.Echo/Unary/x",
                                  request_serializer=ident, response_deserializer=ident)
        expect_code(lambda: bad_path(echo_request(b"x"), metadata=[("authn-token", "demo-token")],
                                     timeout=10), grpc.StatusCode.UNIMPLEMENTED)
        stats = method(ch, "unary", "Stats")
        good = [("authn-token", "demo-token")]

        def counters():
            return echo_response(stats(b"", metadata=good, timeout=10))

        # A denied call never reaches the stand-in.
        before = counters()
        expect_code(lambda: unary(echo_request(b"x"), timeout=10), grpc.StatusCode.UNAUTHENTICATED)
        expect(counters()["unary_calls"] == before["unary_calls"], "a denied call reached pachd")

        # 1000 calls with one token: no WhoAmI beyond the first (already made by Stats).
        before = counters()
        for _ in range(1000):
            reply = echo_response(unary(echo_request(b"ok"), metadata=good, timeout=10))
            expect(reply["payload"] == b"ok", "echo with a valid token failed")
        after = counters()
        expect(after["who_am_i_calls"] == before["who_am_i_calls"],
               f"{after['who_am_i_calls'] - before['who_am_i_calls']} WhoAmI calls for 1000 calls")
        expect(after["unary_calls"] - before["unary_calls"] == 1000, "calls went missing")

        # 50 concurrent first calls with a token not seen before: one WhoAmI between them.
        before = counters()
        second = [("authn-token", "demo-token-2")]
        futures = [unary.future(echo_request(b"c"), metadata=second, timeout=20) for _ in range(50)]
        for f in futures:
            expect(echo_response(f.result())["payload"] == b"c", "concurrent call failed")
        after = counters()
        expect(after["who_am_i_calls"] - before["who_am_i_calls"] == 1,
               f"{after['who_am_i_calls'] - before['who_am_i_calls']} WhoAmI calls for 50 "
               "concurrent first calls, want 1")


def check_auth_bypass(args):
    """Path and header tricks against a protected method: all denied, none reach pachd."""
    good = [("authn-token", "demo-token")]
    with channel(args) as ch:
        stats = method(ch, "unary", "Stats")
        before = echo_response(stats(b"", metadata=good, timeout=10))["unary_calls"]
        tricks = [
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
        for path in tricks:
            call = ch.unary_unary(path, request_serializer=ident, response_deserializer=ident)
            try:
                call(echo_request(b"x"), timeout=10)
                expect(False, f"{path} was let through without a token")
            except grpc.RpcError as e:
                expect(e.code() != grpc.StatusCode.OK, f"{path}: {e.code()}")
        unary = method(ch, "unary", "Unary")
        for metadata, why in [
            ([("authn-token", "")], "empty token"),
            ([("authn-token", "demo-token"), ("authn-token", "demo-token")], "token twice"),
            ([("authn-token", "wrong"), ("authn-token", "demo-token")], "bad then good token"),
        ]:
            expect_code(lambda: unary(echo_request(b"x"), metadata=metadata, timeout=10),
                        grpc.StatusCode.UNAUTHENTICATED)
        after = echo_response(stats(b"", metadata=good, timeout=10))["unary_calls"]
        expect(after == before, f"{after - before} tricked calls reached pachd")


def check_auth_expiry(args):
    """A token pachd says expires soon is refused once it has expired, although cache_ttl
    (60 s) has not run out: the cache never outlives the token."""
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        short = [("authn-token", "short-lived-token")]
        expect(echo_response(unary(echo_request(b"s"), metadata=short, timeout=10))["payload"]
               == b"s", "short-lived token refused while valid")
        time.sleep(7)  # the stand-in's short-lived token lives 6 s from its start
        # pachd's own answer for an expired token, which clients read as "log in again"
        # (not UNAVAILABLE, which they would retry).
        expect_code(lambda: unary(echo_request(b"s"), metadata=short, timeout=10),
                    grpc.StatusCode.INTERNAL, "token expiration is in the past")


def check_auth_not_active(args):
    """pachd without auth: denied by default, with a message that says why."""
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        expect_code(lambda: unary(echo_request(b"x"), metadata=[("authn-token", "t")], timeout=10),
                    grpc.StatusCode.PERMISSION_DENIED, "not activated")


def check_auth_allow_when_disabled(args):
    """when_auth_disabled = "allow": an unauthenticated cluster is reachable (opt-out)."""
    with channel(args) as ch:
        reply = method(ch, "unary", "Unary")(echo_request(b"open"),
                                             metadata=[("authn-token", "t")], timeout=10)
        expect(echo_response(reply)["payload"] == b"open", "call was not forwarded")
        # Without any token, too: pachd without auth serves every call (the auth state is
        # learned from pachd, not guessed).
        reply = method(ch, "unary", "Unary")(echo_request(b"no token"), timeout=10)
        expect(echo_response(reply)["payload"] == b"no token", "tokenless call was refused")


def check_auth_unavailable(args):
    """pachd cannot be asked about the token: UNAVAILABLE from pachgate, never a pass."""
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        expect_code(lambda: unary(echo_request(b"x"), metadata=[("authn-token", "demo-token")],
                                  timeout=20),
                    grpc.StatusCode.UNAVAILABLE, "pachgate cannot verify the token")


def check_auth_rate_limit(args):
    """Three bad tokens (the configured budget), then RESOURCE_EXHAUSTED for this address."""
    with channel(args) as ch:
        unary = method(ch, "unary", "Unary")
        bad = [("authn-token", "guess")]
        for _ in range(3):
            expect_code(lambda: unary(echo_request(b"x"), metadata=bad, timeout=10),
                        grpc.StatusCode.UNAUTHENTICATED)
        expect_code(lambda: unary(echo_request(b"x"), metadata=bad, timeout=10),
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "too many")


def check_tls_upstream_wrong_ca(args):
    """The upstream's certificate does not verify: UNAVAILABLE, and the message says so."""
    with channel(args) as ch:
        empty = ch.unary_unary("/grpc.testing.TestService/EmptyCall",
                               request_serializer=ident, response_deserializer=ident)
        expect_code(lambda: empty(b"", timeout=20), grpc.StatusCode.UNAVAILABLE,
                    "TLS verification failed")


def check_stream_survives_drain(args):
    """A 3-second server stream, started before pachgate is told to drain, completes whole."""
    received = 0
    with channel(args) as ch:
        for raw in method(ch, "server", "ServerStream")(
            echo_request(b"tick", count=30, interval_ms=100), timeout=30
        ):
            expect(echo_response(raw)["sequence"] == received, "messages out of order")
            received += 1
            if received == 3:
                print("streaming", flush=True)
    expect(received == 30, f"stream ended after {received} of 30 messages")


def check_idle_timeout(args):
    """Run with limits.idle_timeout = 2s. A server stream whose messages come 2.5 s apart
    is a call in flight, however quiet, and runs to its end ("first message" is printed
    when the first reply arrives, past the idle timeout, for the caller to look at
    pachgate's metrics while the stream still runs). The connection then carries no call
    for 4 s: pachgate closes it with GOAWAY, and the channel's next call goes out on a new
    connection and succeeds."""
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
        expect(replies == 2, f"the quiet stream delivered {replies} of 2 messages")
        expect(took >= 4.5, f"the stream took {took:.1f}s; its messages were not 2.5 s apart")
        time.sleep(4)
        reply = echo_response(method(ch, "unary", "Unary")(echo_request(b"after idle"), timeout=10))
        expect(reply["payload"] == b"after idle", "the call after the idle close came back wrong")


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
    CHECKS[args.check](args)
    print(f"ok: {args.check}")


if __name__ == "__main__":
    main()
