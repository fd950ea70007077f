# haproxy-ai container image.
#
#   docker build -t haproxy-ai:0.1.0 .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -e HAPROXY_AI_BACKENDS="http://10.0.0.5:8000 http://10.0.0.6:8000" haproxy-ai:0.1.0
#
# Configuration: HAPROXY_AI_* env vars, flags after the image name (`... haproxy-ai:0.1.0 --backend URL`),
# or a file mounted at /etc/haproxy-ai/config.yaml together with
# -e HAPROXY_AI_CONFIG=/etc/haproxy-ai/config.yaml (the image cannot set it: a missing file is an error).
# Env vars win over the file, so the HAPROXY_AI_HOST=0.0.0.0 set below also wins over listen.host.
#
# The admin listener (/healthz /readyz /metrics /admin/*) stays on 127.0.0.1:9901 by default, which is
# what the HEALTHCHECK uses. To reach it from outside the container (Kubernetes probes, Prometheus), set
# HAPROXY_AI_ADMIN_HOST=0.0.0.0 and HAPROXY_AI_ADMIN_TOKEN: the proxy refuses a non-loopback admin
# listener without a token. /healthz, /readyz and /metrics stay open; the token guards /admin/*.
#
# Mirroring (request/response records, README "Mirroring request/response records") is off unless a
# config file turns it on; the image ships the PostgreSQL sink's driver (the [postgres] extra). To use it:
#   - mount a config file with a `mirror:` section (enabled: true, spool_dir, sinks) as above;
#   - put the spool on a volume at /var/lib/haproxy-ai, the working directory and the one directory
#     UID 10001 may write (a relative spool_dir, like the default `haproxy-ai-spool`, lands there);
#   - give the database password as PGPASSWORD (libpq's variable) from the environment, not in the DSN.
#   docker run --rm --stop-timeout 40 -p 127.0.0.1:8080:8080 \
#     -v "$PWD/haproxy-ai.yaml:/etc/haproxy-ai/config.yaml:ro" -e HAPROXY_AI_CONFIG=/etc/haproxy-ai/config.yaml \
#     -v haproxy-ai-spool:/var/lib/haproxy-ai -e PGPASSWORD haproxy-ai:0.1.0
# A named volume keeps undelivered records across container restarts (it starts as a copy of the image's
# directory, owned by 10001). Without one, the VOLUME below gives each container an anonymous volume
# (writable even with --read-only) that `--rm` / `docker rm -v` delete. One process per spool: two
# containers must not share a spool volume (a LOCK file refuses the second).

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a self-contained venv with the runtime dependencies only (no test/load/dev extras) ---
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# A C compiler for the mirror's record encoder (haproxy_ai/mirror/_fastrecord.c; without one the
# install would fall back to pure Python). Only this stage has it: the runtime image gets the venv.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY haproxy_ai ./haproxy_ai
# pip compiles the .pyc files here: the runtime root filesystem may be read-only. The [postgres]
# extra (asyncpg) lets the mirror ship records to PostgreSQL; nothing else optional.
RUN pip install --no-cache-dir "./[postgres]"

# --- runtime ---
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="haproxy-ai" \
      org.opencontainers.image.description="High-availability streaming reverse proxy for AI inference replicas (vLLM, TGI, any OpenAI-compatible server)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

# A fixed, non-root UID/GID so Kubernetes' runAsNonRoot can verify it and file permissions are predictable.
# /var/lib/haproxy-ai is the one directory it may write: the mirror's spool. A new named volume mounted
# there starts as a copy of it, owned by 10001 as well.
RUN groupadd --system --gid 10001 haproxy-ai \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin haproxy-ai \
    && mkdir -p /etc/haproxy-ai \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/haproxy-ai

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HAPROXY_AI_HOST=0.0.0.0

USER 10001:10001
# The working directory is the spool's home: a relative mirror.spool_dir resolves under it.
WORKDIR /var/lib/haproxy-ai
VOLUME ["/var/lib/haproxy-ai"]
EXPOSE 8080 9901

# No curl in the slim image: python's urllib, with proxies disabled so an HTTP_PROXY in the
# environment cannot redirect the probe. Follows HAPROXY_AI_ADMIN_PORT if it is set.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/healthz' % (os.environ.get('HAPROXY_AI_ADMIN_PORT') or '9901'), timeout=2)"]

# Exec form: haproxy-ai is PID 1 and gets SIGTERM itself (it drains open requests for
# listen.shutdown_grace, then exits 0); SIGHUP reloads the configuration.
STOPSIGNAL SIGTERM
ENTRYPOINT ["haproxy-ai", "serve"]
