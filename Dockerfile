# Meterway gateway. Build: docker build -t meterway .
#
# The image serves no provider until you give it a config: mount one over
# /etc/meterway/meterway.toml (see config/docker.toml for what it holds).
# Listening on 0.0.0.0, it refuses to start without MW_METRICS_TOKEN
# (/metrics shows revenue per model).
#
# Embedded (SQLite in the /data volume, in-process holds; one process):
#   docker run -p 8080:8080 -v meterway-data:/data \
#     -v $PWD/meterway.toml:/etc/meterway/meterway.toml:ro \
#     -e MW_METRICS_TOKEN=... -e MW_ADMIN_TOKEN=... -e OPENAI_API_KEY=... meterway
#
# Postgres + Redis (Redis with maxmemory-policy noeviction): migrate once, explicitly, then serve.
#   docker run --rm -e DATABASE_URL=postgresql://meterway:...@db/meterway meterway meterway migrate
#   docker run -p 8080:8080 -e DATABASE_URL=postgresql://meterway:...@db/meterway \
#     -e REDIS_URL=redis://cache:6379/0 -e MW_METRICS_TOKEN=... -e MW_ADMIN_TOKEN=... \
#     -v $PWD/meterway.toml:/etc/meterway/meterway.toml:ro meterway
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MW_LISTEN__HOST=0.0.0.0 \
    MW_LISTEN__PORT=8080 \
    MW_SQLITE_PATH=/data/meterway.sqlite3 \
    MW_CONFIG=/etc/meterway/meterway.toml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY ledger ./ledger
COPY payments ./payments
COPY config ./config
# The fake provider ships for `meterway demo` and `meterway fake-upstream` only; serve never loads it.
COPY fakes ./fakes
# The default config has no provider (no fake upstream baked in): mount your own.
RUN pip install --no-cache-dir . \
    && mkdir -p /data /etc/meterway \
    && cp config/docker.toml /etc/meterway/meterway.toml \
    && useradd --system --home /data meterway \
    && chown meterway /data

USER meterway
VOLUME ["/data"]
EXPOSE 8080
CMD ["meterway", "serve"]
