"""Websocket checks through pachgate with the Python `websockets` client over wss://.

The stand-in console echoes data messages; pachgate must carry text, binary, large
messages, ping/pong and the close handshake unchanged, and must not cut an idle session.

usage: ws_checks.py --url wss://localhost:PORT/ws --ca CA_FILE [--idle SECONDS]
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args()
    asyncio.run(run(args))
    print("ok: websocket")


if __name__ == "__main__":
    main()
