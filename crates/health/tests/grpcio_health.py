"""A grpcio server (gRPC's C-core HTTP/2 stack) answering grpc.health.v1.Health/Check, for
crates/health/tests/grpcio.rs. The messages are raw bytes: the answer is
HealthCheckResponse{status} encoded by hand (field 1, varint), so no protobuf package is
needed.

Prints "grpcio-health listening on ADDR", then reads commands from stdin, one a line:
  status N   answer with ServingStatus N (1 SERVING, the start; 2 NOT_SERVING)
  abort N    end each call with grpc-status N instead
"""

import sys
from concurrent import futures

import grpc


def main():
    state = {"status": 1, "abort": 0}

    def check(request, context):
        if state["abort"]:
            context.abort(grpc.StatusCode(_code(state["abort"])), "told to fail")
        return bytes([0x08, state["status"]])

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"grpcio-health listening on 127.0.0.1:{port}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if len(words) == 2 and words[0] in ("status", "abort"):
            state[words[0]] = int(words[1])
            print(f"ok {line.strip()}", flush=True)
    server.stop(grace=0)


def _code(number):
    """grpc.StatusCode's value is a (number, name) pair."""
    return next(code.value for code in grpc.StatusCode if code.value[0] == number)


if __name__ == "__main__":
    main()
