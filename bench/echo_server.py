"""The floor: a bare gRPC unary echo on the same server setup as the services, no interceptors."""

import sys
from concurrent import futures

import grpc


def main(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": echo}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1]))
