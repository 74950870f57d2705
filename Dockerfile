# Placeholder until the container issue lands: builds and runs, not yet multi-stage.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 relay && mkdir /data && chown relay /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip install --no-cache-dir .
USER relay
ENV MMOLOVE_RELAY_DB=/data/outbox.db MMOLOVE_RELAY_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8787
ENTRYPOINT ["mmolove-relay"]
CMD ["serve"]
