"""A client that knows a service only through server reflection, as grpcurl does.

It fetches the descriptors from the server, builds request messages from JSON bodies (the same
bodies the README's grpcurl commands send) and returns responses as dicts keyed by the JSON
field names (`riskBand`, where grpcurl prints the proto name `risk_band`), for tests that look
inside them. The real grpcurl runs the README in tests/test_readme_grpcurl.py.
"""

import itertools
import json

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


class ReflectionClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.database)

    def list_services(self) -> list[str]:
        return sorted(self.database.get_services())

    def describe(self, symbol: str):
        return self.pool.FindServiceByName(symbol)

    def call(self, method: str, body: str | dict, timeout: float = 10.0) -> dict:
        """Calls `package.Service/Method` with a JSON body; returns the response as a dict."""
        stub, request = self._prepare(method, body, "unary_unary")
        return self._as_dict(stub(request, timeout=timeout))

    def stream(self, method: str, body: str | dict, count: int, timeout: float = 10.0) -> list:
        """Calls a server-streaming method; returns its first `count` responses as dicts, then
        hangs up (as grpcurl does when its -max-time runs out)."""
        stub, request = self._prepare(method, body, "unary_stream")
        call = stub(request, timeout=timeout)
        try:
            return [self._as_dict(r) for r in itertools.islice(call, count)]
        finally:
            call.cancel()

    def _prepare(self, method: str, body: str | dict, kind: str):
        service_name, _, method_name = method.partition("/")
        descriptor = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        request = json_format.Parse(
            body if isinstance(body, str) else json.dumps(body), request_class()
        )
        stub = getattr(self.channel, kind)(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return stub, request

    def _as_dict(self, response) -> dict:
        return json_format.MessageToDict(response, descriptor_pool=self.pool)
