"""Wrapping the behaviour of a gRPC method handler, for the server interceptors."""

from collections.abc import Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Behavior], Behavior],
    stream: Callable[[Behavior], Behavior],
) -> grpc.RpcMethodHandler:
    """The handler with its behaviour wrapped by `unary` (single response) or `stream`
    (streamed responses): a handler of the same kind, with the same (de)serializers."""
    deserializer, serializer = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary), deserializer, serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary), deserializer, serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream), deserializer, serializer
        )
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            stream(handler.stream_stream), deserializer, serializer
        )
    raise ValueError("a method handler without a behavior")
