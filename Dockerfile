# syntax=docker/dockerfile:1
#
# export-service container image.
#
#   docker build -t export-service:0.1.0 .
#   docker run --rm -p 8080:8080 --env-file prod.env export-service:0.1.0          # api + worker
#   docker run --rm -p 8080:8080 --env-file prod.env export-service:0.1.0 api      # api only
#   docker run --rm --env-file prod.env export-service:0.1.0 worker                # worker only
#
# Only the runtime dependencies are installed (`pip install .`): the `[embedded]`, `[cli]` and
# `[test]` extras (SecantusDB is GPL-2.0, moto, rich, pytest, ...) never enter the image (the
# client commands there say in one line to install `export-service[cli]`), so the container
# needs a real MongoDB (`EXPORT_SERVICE_MONGO_URI`) and S3 (AWS, or `EXPORT_SERVICE_S3_ENDPOINT_URL`).
# See docs/deploy.md.

# 3.11, the version the test suite runs on. 3.12+ would also be safer against the pymongo wedge
# (its `asyncio.wait_for` no longer runs the awaited coroutine in a task of its own), but the
# service does not rely on that: it never cancels a task inside a driver call (queue/worker.py).
# Pinned to a patch release on a named Debian (the floating `3.11-slim` moves to new Debian
# releases and patches on its own); bump it deliberately, e.g. to take a security release.
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: a self-contained virtualenv in /opt/venv holding the service and its pinned deps.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from the runtime lock alone (exact versions, every file's sha256 checked;
# made by ./scripts/lock), so that code changes reuse this (large) layer. No extras.
COPY requirements/runtime.lock /tmp/runtime.lock
RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.lock

# Then the service itself (README/LICENSE are optional metadata inputs; the glob tolerates absence).
COPY pyproject.toml README.md* LICENSE* ./
COPY export_service ./export_service
# Check the deps are consistent, drop pip and setuptools from the venv (~25 MB the service never
# uses), and smoke-test: the console script exists and the installed CLI (-I: not the source in
# the working directory) imports without pip, rich or any of the dev-only extras.
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && pip uninstall --yes pip setuptools \
    && test -x /opt/venv/bin/export-service \
    && python -I -c "import sys, export_service.cli; sys.exit('rich' in sys.modules)" \
    && ! python -I -c "import rich" 2>/dev/null

# ---------------------------------------------------------------------------------------------
# runtime: slim base + the venv, running as an unprivileged user.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
ARG APP_GID=10001

LABEL org.opencontainers.image.title="export-service" \
      org.opencontainers.image.description="Streams fan-campaign data from MongoDB into CSV and ZIP exports on S3." \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --system --gid "${APP_GID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

# EXPORT_SERVICE_HOST=0.0.0.0: listen on all interfaces inside the container (the default,
# 127.0.0.1, would be unreachable from outside it). Logs are JSON lines; anything written
# goes to /tmp, so the root filesystem can be mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TMPDIR=/tmp \
    EXPORT_SERVICE_HOST=0.0.0.0 \
    EXPORT_SERVICE_PORT=8080 \
    EXPORT_SERVICE_LOG_FORMAT=json \
    EXPORT_SERVICE_DATA_DIR=/tmp/export-service

WORKDIR /tmp

USER ${APP_UID}:${APP_GID}

EXPOSE 8080

# Liveness through GET /heartbeat, with the standard library only (no curl in slim): the API's
# port, or for a container started as `worker` its own listener's when
# EXPORT_SERVICE_WORKER_METRICS_PORT is set (503 once its loop is stuck). A worker without that
# port serves no HTTP, so there the check only says the process is up.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; w = b'worker' in open('/proc/1/cmdline', 'rb').read().split(b'\\0'); p = os.environ.get('EXPORT_SERVICE_WORKER_METRICS_PORT', '') if w else os.environ.get('EXPORT_SERVICE_PORT', '8080'); sys.exit(0) if not p else urllib.request.urlopen('http://127.0.0.1:%s/heartbeat' % p, timeout=4)"]

# Exec form: the service is PID 1 and receives SIGTERM directly (graceful worker shutdown).
ENTRYPOINT ["export-service"]
CMD ["serve"]
