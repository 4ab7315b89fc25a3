# syntax=docker/dockerfile:1
# The creditline image: one image for the three services; the argument picks one.
#   docker build -t creditline:0.1.0 .
#   docker run --rm -p 50051:50051 creditline:0.1.0 scoring      (or limits, monitoring)
#
# Both stages start from the same base, pinned by version. To pin its exact bytes as well, add
# the digest that `docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints:
#   FROM python:3.11.14-slim-bookworm@sha256:<digest>

# ---- builder: installs the project and its dependencies into a virtual environment ----------
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv

WORKDIR /app
# The runtime's locked set (`make lock`), every file checked against its hash and none built
# here: what the services import, without training, code generation or test packages.
COPY requirements/runtime.lock requirements/
RUN /opt/venv/bin/python -m pip install --require-hashes --only-binary=:all: --no-deps \
        -r requirements/runtime.lock

COPY pyproject.toml README.md ./
COPY creditline/ creditline/
COPY services/ services/
COPY models/ models/

# The project as a wheel, installed without its dependencies (the lock's are there): the wheel
# carries the data files the services read (the default policy and rules, the Alembic scripts;
# see package-data in pyproject.toml) and pip compiles the sources, since the final root
# filesystem is read-only. Then the venv's own pip goes.
RUN /opt/venv/bin/python -m pip wheel --no-deps --wheel-dir /tmp/dist . \
    && /opt/venv/bin/python -m pip install --no-deps /tmp/dist/creditline-*.whl \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools wheel

# ---- final: the venv (with the code) and the models; no compiler, no pip, no build files ------
FROM python:3.11.14-slim-bookworm

# A fixed numeric user (the Kubernetes manifests run as 10001:10001 with runAsNonRoot), and
# no pip, setuptools or wheel left in the system Python.
RUN groupadd --system --gid 10001 creditline \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin creditline \
    && python -m pip uninstall --yes --quiet pip setuptools wheel

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/models /app/models
# Local `docker run` keeps SQLite under /app/data (the default URL is relative to /app); on
# Kubernetes the root filesystem is read-only and the database is PostgreSQL.
RUN mkdir /app/data && chown 10001:10001 /app/data

WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    OMP_NUM_THREADS=1 \
    CREDITLINE_SCORING_HOST=0.0.0.0 \
    CREDITLINE_LIMITS_HOST=0.0.0.0 \
    CREDITLINE_MONITORING_HOST=0.0.0.0 \
    CREDITLINE_SCORING_MODEL_DIR=/app/models

USER 10001:10001
EXPOSE 50051 50052 50053 8081 9090

# Kubernetes probes the health port natively (grpc probes); a Docker HEALTHCHECK would need a
# client binary in the image for nothing.
# checkov:skip=CKV_DOCKER_2: Kubernetes native gRPC probes check health; the image carries no probe client.
ENTRYPOINT ["creditline", "serve"]
CMD ["--help"]
