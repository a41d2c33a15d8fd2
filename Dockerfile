# syntax=docker/dockerfile:1
#
# coder-task-sidecar image.
#   docker build -t coder-task-sidecar .
#   docker run --rm \
#     -e CODER_AGENT_URL -e CODER_AGENT_TOKEN -e CODER_TASK_ID \
#     -e CODER_MCP_AI_AGENTAPI_URL=http://agentapi:3284 \
#     -v coder-task-sidecar-state:/var/lib/coder-task-sidecar \
#     coder-task-sidecar
# Mount a volume on /var/lib/coder-task-sidecar so a snapshot spooled at stop is
# delivered by the next container. `docker stop -t 30` (or terminationGracePeriodSeconds
# in Kubernetes) must exceed SIDECAR_SHUTDOWN_TIMEOUT (10 s) for the final flush.

# Both stages use the same image, so the virtualenv built in the first one runs
# unchanged (same interpreter path) in the second.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# Wheels for the sidecar and every dependency, then an isolated install from those
# wheels only; the final stage copies just the virtualenv, never the build inputs.
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_HTTP_ADDR=127.0.0.1:9464 \
    SIDECAR_STATE_DIR=/var/lib/coder-task-sidecar \
    SIDECAR_LOG_FORMAT=json
# A fixed numeric UID lets Kubernetes' runAsNonRoot check the image without a passwd
# lookup, and lets a mounted token file be chowned to it ahead of time.
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid sidecar --no-create-home \
       --home-dir /var/lib/coder-task-sidecar --shell /usr/sbin/nologin sidecar \
    && install -d -o sidecar -g sidecar -m 0700 /var/lib/coder-task-sidecar
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/coder-task-sidecar

# /metrics and /readyz listen on SIDECAR_HTTP_ADDR too.
EXPOSE 9464
STOPSIGNAL SIGTERM
# python's urllib rather than curl: the slim image has no curl and should not get one.
# Proxies are bypassed on purpose (an inherited HTTP_PROXY would otherwise capture the
# loopback probe); a wildcard bind address is probed over loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; a = os.environ.get('SIDECAR_HTTP_ADDR') or '127.0.0.1:9464'; h, _, p = a.strip().rpartition(':'); h = h.strip('[]') or '127.0.0.1'; h = {'0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h); h = '[' + h + ']' if ':' in h else h; u.build_opener(u.ProxyHandler({})).open('http://' + h + ':' + p + '/healthz', timeout=4).read()"]

ENTRYPOINT ["coder-task-sidecar"]
CMD ["run"]
