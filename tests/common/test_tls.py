"""TLS and mTLS on real servers with the development certificates, the plaintext health port,
and the settings that stop a service when its certificates are unusable."""

import ipaddress
import os

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from creditline.limits.v1 import limits_service_pb2, limits_service_pb2_grpc
from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.scoring.v1 import scoring_service_pb2_grpc
from services.cli import app
from services.common.channels import ClientSecurity
from services.common.server import GrpcServer
from services.devtools import SERVICES, write_dev_certs, write_dev_tokens
from services.limits.__main__ import build_server as build_limits_server
from services.limits.settings import LimitsSettings
from services.scoring.settings import ScoringSettings
from tests.common.test_auth import bearer
from tests.limits.test_service import GOOD_APPLICANT, cny, features
from tests.servers import start_scoring

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The suite's certificates, plus one for an app backend, from one development CA."""
    directory = tmp_path_factory.mktemp("certs")
    write_dev_certs(directory, (*SERVICES, "app-backend"))
    return directory


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory):
    """Certificates with the same names from another CA."""
    directory = tmp_path_factory.mktemp("other-certs")
    write_dev_certs(directory)
    return directory


def tls_settings(certs, service: str, ca: bool = True) -> dict:
    return dict(
        tls_cert_file=certs / f"{service}.crt",
        tls_key_file=certs / f"{service}.key",
        tls_ca_file=certs / "ca.crt" if ca else None,
    )


@pytest.fixture(scope="module")
def mtls_scoring(certs):
    """Scoring on mTLS, with its health also on a plaintext port."""
    server, _ = start_scoring(**tls_settings(certs, "scoring"), health_port=0)
    yield server
    server.stop(0)


def credentials(root, key=None, chain=None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=root.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=chain.read_bytes() if chain else None,
    )


def list_models(port: int, channel_credentials, host: str = "127.0.0.1"):
    with grpc.secure_channel(f"{host}:{port}", channel_credentials) as channel:
        return scoring_service_pb2_grpc.ScoringServiceStub(channel).ListModels(
            pb.ListModelsRequest(), timeout=10
        )


def refused(port: int, channel_credentials) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        list_models(port, channel_credentials)
    return raised.value.code()


# -- certificates ------------------------------------------------------------------------------


def test_dev_certificates_name_every_service_for_both_ends(certs):
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for service in SERVICES:
        certificate = x509.load_pem_x509_certificate((certs / f"{service}.crt").read_bytes())
        assert certificate.issuer == ca.subject
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(names.get_values_for_type(x509.DNSName)) == {
            "localhost",
            service,
            f"{service}.creditline.svc",
            f"{service}.creditline.svc.cluster.local",
        }
        assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert os.stat(certs / f"{service}.key").st_mode & 0o777 == 0o600
    assert os.stat(certs / "ca.key").st_mode & 0o777 == 0o600


def test_the_dev_certs_command_writes_them_and_keeps_a_ca_it_finds(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["dev", "certs", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    expected = {"ca.crt", "ca.key"} | {f"{s}.{ext}" for s in SERVICES for ext in ("crt", "key")}
    assert {path.name for path in tmp_path.iterdir()} == expected
    ca = (tmp_path / "ca.crt").read_bytes()
    again = runner.invoke(app, ["dev", "certs", "--out", str(tmp_path)])
    assert again.exit_code != 0 and "--force" in again.output
    assert (tmp_path / "ca.crt").read_bytes() == ca
    forced = runner.invoke(app, ["dev", "certs", "--out", str(tmp_path), "--force"])
    assert forced.exit_code == 0 and (tmp_path / "ca.crt").read_bytes() != ca


# -- mTLS ------------------------------------------------------------------------------------


def test_a_client_with_a_certificate_of_the_ca_is_served(mtls_scoring, certs):
    client = credentials(certs / "ca.crt", certs / "limits.key", certs / "limits.crt")
    assert list_models(mtls_scoring.port, client).models
    # The certificates name the host both ways it is reached locally.
    assert list_models(mtls_scoring.port, client, host="localhost").models


def test_a_client_without_a_certificate_is_refused(mtls_scoring, certs):
    assert refused(mtls_scoring.port, credentials(certs / "ca.crt")) == (
        grpc.StatusCode.UNAVAILABLE
    )


def test_a_client_with_a_certificate_of_another_ca_is_refused(mtls_scoring, certs, other_certs):
    client = credentials(certs / "ca.crt", other_certs / "limits.key", other_certs / "limits.crt")
    assert refused(mtls_scoring.port, client) == grpc.StatusCode.UNAVAILABLE


def test_a_client_refuses_a_server_it_cannot_verify(mtls_scoring, certs, other_certs):
    client = credentials(
        other_certs / "ca.crt", other_certs / "limits.key", other_certs / "limits.crt"
    )
    assert refused(mtls_scoring.port, client) == grpc.StatusCode.UNAVAILABLE


def test_the_tls_port_refuses_plaintext_while_the_health_port_answers(mtls_scoring):
    with grpc.insecure_channel(f"127.0.0.1:{mtls_scoring.port}") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert mtls_scoring.health_port not in (None, mtls_scoring.port)
    with grpc.insecure_channel(f"127.0.0.1:{mtls_scoring.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "creditline.scoring.v1.ScoringService"):
            request = health_pb2.HealthCheckRequest(service=service)
            assert health.Check(request, timeout=5).status == SERVING
        # Health only: the service itself is not on the plaintext port.
        with pytest.raises(grpc.RpcError) as raised:
            scoring_service_pb2_grpc.ScoringServiceStub(channel).ListModels(
                pb.ListModelsRequest(), timeout=5
            )
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_tls_without_a_ca_asks_no_client_certificate(certs):
    server, _ = start_scoring(**tls_settings(certs, "scoring", ca=False))
    try:
        assert list_models(server.port, credentials(certs / "ca.crt")).models
    finally:
        server.stop(0)


def test_limits_calls_scoring_over_mtls_with_its_token(certs, tmp_path):
    """The whole path secured: app backend -> limits -> scoring, each hop mTLS with a token."""
    dev_tokens = write_dev_tokens(tmp_path / "tokens")
    scoring, _ = start_scoring(**tls_settings(certs, "scoring"), tokens_file=dev_tokens.tokens_file)
    limits = None
    try:
        limits = build_limits_server(
            LimitsSettings(
                port=0,
                database_url=f"sqlite:///{tmp_path / 'limits.db'}",
                scoring_target=f"127.0.0.1:{scoring.port}",
                policy_reload_interval_seconds=0,
                shutdown_grace_seconds=2,
                tokens_file=dev_tokens.tokens_file,
                client_token_file=dev_tokens.client_token_files["limits"],
                **tls_settings(certs, "limits"),
            )
        )
        app_backend = dict(dev_tokens.tokens.values())["app_backend"]
        client = credentials(certs / "ca.crt", certs / "app-backend.key", certs / "app-backend.crt")
        with grpc.secure_channel(f"127.0.0.1:{limits.port}", client) as channel:
            opened = limits_service_pb2_grpc.LimitsServiceStub(channel).OpenAccount(
                limits_service_pb2.OpenAccountRequest(
                    request_id="tls-open-1",
                    customer_id="cust-tls",
                    features=features(GOOD_APPLICANT),
                    monthly_income=cny(20_000),
                ),
                metadata=bearer(app_backend),
                timeout=10,
            )
        assert opened.account.account_id and opened.account.risk_band
    finally:
        if limits is not None:
            limits.stop(0)
        scoring.stop(0)


# -- settings that stop a service ------------------------------------------------------------


def start_with(**settings) -> None:
    GrpcServer(ScoringSettings(port=0, **settings), [], domain="scoring.creditline")


def test_half_a_key_pair_stops_the_service_naming_both_variables(certs):
    with pytest.raises(SystemExit) as raised:
        start_with(tls_cert_file=certs / "scoring.crt")
    assert "CREDITLINE_SCORING_TLS_CERT_FILE and CREDITLINE_SCORING_TLS_KEY_FILE" in str(
        raised.value
    )
    with pytest.raises(SystemExit, match="CREDITLINE_SCORING_TLS_CERT_FILE and"):
        start_with(tls_key_file=certs / "scoring.key")
    with pytest.raises(SystemExit, match="CREDITLINE_SCORING_TLS_CA_FILE is set without"):
        start_with(tls_ca_file=certs / "ca.crt")


def test_an_unusable_file_stops_the_service_naming_its_variable(certs, other_certs, tmp_path):
    (tmp_path / "not-pem").write_text("hello\n")
    pair = dict(tls_cert_file=certs / "scoring.crt", tls_key_file=certs / "scoring.key")
    cases = [
        ({**pair, "tls_cert_file": tmp_path / "absent.crt"}, "TLS_CERT_FILE: cannot read"),
        ({**pair, "tls_key_file": tmp_path}, "TLS_KEY_FILE: cannot read"),
        ({**pair, "tls_ca_file": tmp_path / "absent.crt"}, "TLS_CA_FILE: cannot read"),
        ({**pair, "tls_cert_file": tmp_path / "not-pem"}, "TLS_CERT_FILE: .* no PEM certificate"),
        ({**pair, "tls_key_file": certs / "scoring.crt"}, "TLS_KEY_FILE: .* no unencrypted PEM"),
        ({**pair, "tls_ca_file": tmp_path / "not-pem"}, "TLS_CA_FILE: .* no PEM certificate"),
        ({**pair, "tls_key_file": other_certs / "scoring.key"}, "TLS_KEY_FILE: .* not the key"),
    ]
    for settings, message in cases:
        with pytest.raises(SystemExit, match=f"CREDITLINE_SCORING_{message}"):
            start_with(**settings)


def test_an_unusable_client_token_file_stops_the_service(tmp_path):
    with pytest.raises(SystemExit, match="CREDITLINE_LIMITS_CLIENT_TOKEN_FILE: cannot read"):
        ClientSecurity.from_settings(LimitsSettings(client_token_file=tmp_path / "absent"))
    (tmp_path / "empty.token").write_text("\n")
    with pytest.raises(SystemExit, match="CREDITLINE_LIMITS_CLIENT_TOKEN_FILE: .* one token"):
        ClientSecurity.from_settings(LimitsSettings(client_token_file=tmp_path / "empty.token"))


def test_a_taken_health_port_is_refused(mtls_scoring):
    with pytest.raises(SystemExit, match="cannot listen for health"):
        start_with(health_port=mtls_scoring.health_port)
