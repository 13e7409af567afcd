"""A plain grpcio server standing in for one pachd replica during a rolling restart.

Answers /versionpb_v2.API/GetVersion with an empty message (and /pachgate.test.Slow/Wait
after 3 seconds, to keep a connection busy through a shutdown), and prints
"grpc-backend listening on ADDR" on stdout. Binds with SO_REUSEPORT, so a second replica can
take the same address, as a new pod takes over a Service's endpoint. On SIGTERM it stops the
way grpc servers do: GOAWAY to every connection, in-flight calls finish, then it prints
"served N" (calls answered) and exits.

usage: grpc_backend.py [--port PORT]   (0, the default: any free port)
"""

import argparse
import signal
import threading
import time
from concurrent import futures

import grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    served = 0
    lock = threading.Lock()

    def get_version(request, context):
        nonlocal served
        with lock:
            served += 1
        return b""

    def wait(request, context):
        time.sleep(3)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "versionpb_v2.API", {"GetVersion": grpc.unary_unary_rpc_method_handler(get_version)}
    )
    slow = grpc.method_handlers_generic_handler(
        "pachgate.test.Slow", {"Wait": grpc.unary_unary_rpc_method_handler(wait)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((handler, slow))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"grpc-backend listening on 127.0.0.1:{port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.1):
        pass
    server.stop(grace=5).wait()
    print(f"served {served}", flush=True)


if __name__ == "__main__":
    main()
