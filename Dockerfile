# Meterway gateway. Build: docker build -t meterway .
# Run (embedded SQLite, data in a volume):
#   docker run -p 8080:8080 -v meterway-data:/data meterway
# Run on Postgres + Redis: add -e DATABASE_URL=postgresql://... -e REDIS_URL=redis://...
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
RUN pip install --no-cache-dir . \
    && mkdir -p /data /etc/meterway \
    && cp config/example.toml /etc/meterway/meterway.toml \
    && useradd --system --home /data meterway \
    && chown meterway /data

USER meterway
VOLUME ["/data"]
EXPOSE 8080
CMD ["meterway", "serve"]
