"""A TLS websocket upstream for pachgate's tests, behind a spy that reports how each
connection to it began: with a TLS ClientHello, or with cleartext (then its first line, and
whether a Cookie header travelled in the clear).

Behind the spy, the `websockets` server (TLS with the given certificate) echoes every
message and reports each handshake's path and Cookie header. Reports are JSON lines on
stdout; the verdicts are the Rust test's (tests/websocket_upstream_tls.rs).

usage: ws_tls_upstream.py --cert tls.crt --key tls.key
prints "ws-tls-upstream listening on 127.0.0.1:PORT", then one JSON line per event.
"""

import argparse
import asyncio
import json
import ssl

from websockets.asyncio.server import serve


def report(**event):
    print(json.dumps(event), flush=True)


async def echo(ws):
    async for message in ws:
        await ws.send(message)


def process_request(connection, request):
    report(event="handshake", path=request.path, cookie=request.headers.get("Cookie"))
    return None


async def relay(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def spy(inner_port, reader, writer):
    first = await reader.read(65536)
    if not first:
        writer.close()
        return
    if first[0] == 0x16:  # a TLS handshake record
        report(event="connection", first_bytes="tls")
    else:
        report(
            event="connection",
            first_bytes="cleartext",
            first_line=first.split(b"\r\n", 1)[0].decode("latin-1"),
            cookie_in_clear=b"\r\ncookie:" in first.lower(),
        )
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", inner_port)
    up_writer.write(first)
    await up_writer.drain()
    await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))


async def main(args):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    async with serve(
        echo, "127.0.0.1", 0, ssl=context, process_request=process_request
    ) as inner:
        inner_port = inner.sockets[0].getsockname()[1]
        front = await asyncio.start_server(
            lambda r, w: spy(inner_port, r, w), "127.0.0.1", 0
        )
        port = front.sockets[0].getsockname()[1]
        print(f"ws-tls-upstream listening on 127.0.0.1:{port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    asyncio.run(main(parser.parse_args()))
