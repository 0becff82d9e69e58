# sharekey gateway image. Expects external PostgreSQL and Redis (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY sql ./sql
COPY templates ./templates
COPY static ./static
RUN pip install -e '.[tracing]' && useradd --system --home /app sharekey
USER sharekey

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
CMD ["sharekey", "serve", "--host", "0.0.0.0"]
