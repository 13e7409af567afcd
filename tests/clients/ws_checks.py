"""Websocket checks through pachgate with the Python `websockets` client over wss://.

The stand-in console echoes data messages; pachgate must carry text, binary, large
messages, ping/pong and the close handshake unchanged, and must not cut an idle session.

With --until-going-away the client opens a session, says "open", keeps echoing until
pachgate's drain ends the session (the test expects a close frame 1001, going away).

Either way it prints what it observed as one JSON object on its last line of stdout; the
verdict is the Rust test's.

usage: ws_checks.py --url wss://localhost:PORT/ws --ca CA_FILE [--idle SECONDS]
       ws_checks.py --url ... --ca ... --until-going-away
"""

import argparse
import asyncio
import json
import ssl

import websockets


def first_difference(got, want):
    """The first offset where two messages differ (None when equal)."""
    if isinstance(got, str) != isinstance(want, str):
        return 0
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            return i
    return None if len(got) == len(want) else min(len(got), len(want))


def close_frame(ws):
    received = ws.protocol.close_rcvd
    if received is None:
        return None
    return {"code": received.code, "reason": received.reason}


async def run(args):
    observed = {}
    ctx = ssl.create_default_context(cafile=args.ca)
    async with websockets.connect(args.url, ssl=ctx, max_size=None, compression=None) as ws:
        await ws.send("hello, console")
        observed["text_echo"] = await ws.recv()

        binary = bytes(range(256)) * 4
        await ws.send(binary)
        echoed = await ws.recv()
        observed["binary_echo"] = {"bytes": len(echoed),
                                   "first_difference": first_difference(echoed, binary)}

        big = bytes(range(251)) * (16 * 1024 * 1024 // 251 + 1)
        big = big[: 16 * 1024 * 1024]
        await ws.send(big)
        echoed = await asyncio.wait_for(ws.recv(), 120)
        observed["big_echo"] = {"bytes": len(echoed),
                                "first_difference": first_difference(echoed, big)}

        pong = await ws.ping(b"are-you-there")
        try:
            await asyncio.wait_for(pong, 10)
            observed["pong_within_10s"] = True
        except asyncio.TimeoutError:
            observed["pong_within_10s"] = False

        # Idle longer than every request/header timeout pachgate was configured with.
        await asyncio.sleep(args.idle)
        await ws.send("still here")
        observed["echo_after_idle"] = await ws.recv()

        await ws.close(code=4001, reason="done testing")
        observed["close_received"] = close_frame(ws)
    return observed


async def until_going_away(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    async with websockets.connect(args.url, ssl=ctx, compression=None) as ws:
        await ws.send("before the drain")
        first = await ws.recv()
        print("open", flush=True)
        echoes = 0
        wrong_echoes = 0
        try:
            while True:
                await ws.send(f"message {echoes}")
                if await ws.recv() != f"message {echoes}":
                    wrong_echoes += 1
                echoes += 1
                await asyncio.sleep(0.2)
        except websockets.ConnectionClosed:
            pass
        return {"first_echo": first, "echoes": echoes, "wrong_echoes": wrong_echoes,
                "close_received": close_frame(ws)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--until-going-away", action="store_true")
    args = parser.parse_args()
    check = until_going_away if args.until_going_away else run
    print(json.dumps(asyncio.run(check(args))), flush=True)


if __name__ == "__main__":
    main()
