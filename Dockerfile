# CPU-only image of the completion service.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CHARRNN_MODEL_STORE=/data/model_store CHARRNN_DEVICE=cpu

WORKDIR /srv
# torch first and pinned: the CPU build; TORCH_INDEX_URL may name a CPU-only wheel index
RUN python -m pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY app ./app
RUN python -m pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 charrnn \
    && mkdir -p /data/model_store && chown -R charrnn /data

USER charrnn
VOLUME ["/data/model_store"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["python", "-m", "app", "serve", "--host", "0.0.0.0", "--port", "8000"]
