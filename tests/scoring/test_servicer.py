"""The servicer alone, through grpcio-testing: no network, no interceptors."""

import grpc
import grpc_testing
import pytest

from creditline.scoring.v1 import scoring_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.scoring.registry import ModelRegistry
from services.scoring.servicer import ScoringServicer
from services.scoring.settings import BUNDLED_MODELS
from tests.scoring.helpers import card, score_request, valid_features

SERVICE = pb.DESCRIPTOR.services_by_name["ScoringService"]


@pytest.fixture(scope="module")
def test_server():
    registry = ModelRegistry(BUNDLED_MODELS)
    registry.refresh()
    servicer = ScoringServicer(registry, max_batch_rows=100)
    yield grpc_testing.server_from_dictionary({SERVICE: servicer}, grpc_testing.strict_real_time())
    registry.close()


def invoke(server, method: str, request):
    rpc = server.invoke_unary_unary(SERVICE.methods_by_name[method], (), request, None)
    return rpc.termination()


def test_list_models_through_the_servicer(test_server):
    response, _, code, _ = invoke(test_server, "ListModels", pb.ListModelsRequest())
    assert code == grpc.StatusCode.OK
    assert {m.name for m in response.models} == {"application", "behaviour"}


def test_score_through_the_servicer(test_server):
    request = score_request("behaviour", valid_features(card("behaviour"), 2), "zh-CN")
    response, _, code, _ = invoke(test_server, "Score", request)
    assert code == grpc.StatusCode.OK
    assert response.model == "behaviour" and 0 < response.probability_of_default < 1


def test_servicer_raises_domain_errors_for_the_interceptor_to_map():
    registry = ModelRegistry(BUNDLED_MODELS)
    registry.refresh()
    servicer = ScoringServicer(registry, max_batch_rows=100)
    with pytest.raises(InvalidArgument) as raised:
        servicer.Score(score_request("nope", {}), None)
    assert [v.field for v in raised.value.violations] == ["model"]
    registry.close()
