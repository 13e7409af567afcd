"""HTTP/2 frames by hand, for the test peers that must break or race the protocol
(h2_goaway_race.py, h2_upstream.py): frame types and flags, one frame's bytes, and a reader
that returns whole frames from a socket."""

import struct

DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING = 0x0, 0x1, 0x3, 0x4, 0x5, 0x6
GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class Frames:
    """Whole frames from a socket: (type, flags, stream, payload), or None once it closes."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def next(self):
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    head, self.buffer = self.buffer[:9 + length], self.buffer[9 + length:]
                    stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                    return head[3], head[4], stream, head[9:]
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data
