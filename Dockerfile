# mmolove-relay as a container or a pod sidecar; see "Run as a sidecar" in docs/deploy.md.
#
# BASE_IMAGE is any Debian-like image with python3 (>= 3.11) and its venv module. Both
# stages use it, so the venv built in the first runs unchanged in the second; point it at
# a local image to build without a registry (tests/test_container.py does).
# Build with `podman build --format docker` (or docker): the OCI format drops HEALTHCHECK.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
# The venv's own pip and setuptools are not needed at run time: leave them behind.
RUN python3 -m venv /opt/mmolove-relay \
 && /opt/mmolove-relay/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/mmolove-relay/bin/pip uninstall --yes --quiet pip setuptools

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin relay \
 && mkdir /data \
 && chown 10001:10001 /data \
 && chmod 0700 /data
COPY --from=build /opt/mmolove-relay /opt/mmolove-relay
# Sidecar defaults: listen on the pod network (which requires MMOLOVE_RELAY_INGEST_TOKEN),
# the outbox on the volume, and the secret from MMOLOVE_SECRET or a mounted secret file.
ENV PATH=/opt/mmolove-relay/bin:$PATH \
    MMOLOVE_RELAY_LISTEN=0.0.0.0:8787 \
    MMOLOVE_RELAY_DB=/data/outbox.db \
    MMOLOVE_SECRET_FILE=/run/secrets/mmolove-secret \
    MMOLOVE_RELAY_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8787
USER 10001:10001
# Python, not curl: the image has no curl. The port follows MMOLOVE_RELAY_LISTEN.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ['MMOLOVE_RELAY_LISTEN'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["mmolove-relay"]
CMD ["serve"]
