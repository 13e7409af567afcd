"""Websocket checks through pachgate with the Python `websockets` client over wss://.

The stand-in console echoes data messages; pachgate must carry text, binary, large
messages, ping/pong and the close handshake unchanged, and must not cut an idle session.

With --until-going-away the client opens a session, says "open", keeps echoing, and
expects pachgate's drain to end it with a close frame 1001 (going away).

usage: ws_checks.py --url wss://localhost:PORT/ws --ca CA_FILE [--idle SECONDS]
       ws_checks.py --url ... --ca ... --until-going-away
"""

import argparse
import asyncio
import ssl
import sys

import websockets


def expect(condition, message):
    if not condition:
        print("FAIL: " + message, file=sys.stderr)
        sys.exit(1)


async def run(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    async with websockets.connect(args.url, ssl=ctx, max_size=None, compression=None) as ws:
        await ws.send("hello, console")
        expect(await ws.recv() == "hello, console", "text echo differs")

        binary = bytes(range(256)) * 4
        await ws.send(binary)
        expect(await ws.recv() == binary, "binary echo differs")

        big = bytes(range(251)) * (16 * 1024 * 1024 // 251 + 1)
        big = big[: 16 * 1024 * 1024]
        await ws.send(big)
        echoed = await asyncio.wait_for(ws.recv(), 120)
        expect(echoed == big, f"16 MiB echo differs ({len(echoed)} bytes back)")

        pong = await ws.ping(b"are-you-there")
        try:
            await asyncio.wait_for(pong, 10)
        except asyncio.TimeoutError:
            expect(False, "no pong within 10 s")

        # Idle longer than every request/header timeout pachgate was configured with.
        await asyncio.sleep(args.idle)
        await ws.send("still here")
        expect(await ws.recv() == "still here", "session did not survive the idle period")

        await ws.close(code=4001, reason="done testing")
        received = ws.protocol.close_rcvd
        expect(received is not None, "no close frame came back")
        expect(received.code == 4001, f"close code {received.code}, want 4001")
        expect(received.reason == "done testing", f"close reason {received.reason!r}")


async def until_going_away(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    async with websockets.connect(args.url, ssl=ctx, compression=None) as ws:
        await ws.send("before the drain")
        expect(await ws.recv() == "before the drain", "echo differs")
        print("open", flush=True)
        echoes = 0
        try:
            while True:
                await ws.send(f"message {echoes}")
                expect(await ws.recv() == f"message {echoes}", "echo differs")
                echoes += 1
                await asyncio.sleep(0.2)
        except websockets.ConnectionClosed:
            pass
        received = ws.protocol.close_rcvd
        expect(received is not None, "the session ended without a close frame")
        expect(received.code == 1001, f"close code {received.code}, want 1001 (going away)")
        print(f"closed with 1001 after {echoes} echoes during the drain", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--until-going-away", action="store_true")
    args = parser.parse_args()
    if args.until_going_away:
        asyncio.run(until_going_away(args))
        return
    asyncio.run(run(args))
    print("ok: websocket")


if __name__ == "__main__":
    main()
