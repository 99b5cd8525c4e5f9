# One image for every selfsup process (api, cpu worker, gpu worker, migrate); the command picks the role.
# TORCH_INDEX_URL picks the torch build: PyPI's default Linux wheel carries CUDA (for the gpu worker);
# build with --build-arg TORCH_INDEX_URL=<a CPU wheel index> for a small CPU-only image.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SELFSUP_HOME=/data

WORKDIR /app
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else pip install "torch==${TORCH_VERSION}"; fi

COPY pyproject.toml README.md alembic.ini ./
COPY selfsup ./selfsup
COPY api ./api
COPY workers ./workers
COPY models ./models
COPY storage ./storage
COPY migrations ./migrations
COPY client ./client
# The client first in the same command: the server depends on selfsup-client, which is not on PyPI.
RUN pip install ./client . && useradd --create-home --uid 1000 selfsup && mkdir -p /data && chown selfsup /data

USER selfsup
VOLUME ["/data"]
EXPOSE 8000
CMD ["selfsup", "api", "--host", "0.0.0.0", "--port", "8000"]
