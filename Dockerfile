# charrnn completion service: a builder stage makes the virtualenv, the runtime stage runs it.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
# CPU-only torch by default (the CUDA build is several GB). To install from local wheels instead:
#   --build-arg WHEELS_DIR=/wheels -v "$PWD/wheels:/wheels:ro"   (podman) or a BuildKit mount
# and, when that directory holds every wheel (scripts/verify-image.sh makes one), also
#   --build-arg PIP_NO_INDEX=1   (an offline build: pip reads only WHEELS_DIR)
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS_DIR=
ARG PIP_NO_INDEX=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /build
COPY pyproject.toml README.md ./
COPY app ./app
RUN if [ -n "$WHEELS_DIR" ]; then \
        pip install --find-links "$WHEELS_DIR" "torch==$TORCH_VERSION"; \
    else \
        pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"; \
    fi \
    && pip install ${WHEELS_DIR:+--find-links "$WHEELS_DIR"} . \
    && python3 -m pip uninstall --yes --quiet pip \
    && sp=$(echo /opt/venv/lib/python3*/site-packages) \
    && rm -rf "$sp/torch/test" "$sp/torch/include" "$sp"/torch/lib/*_test.so \
    && find "$sp/torch/bin" -mindepth 1 -maxdepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
    && find "$sp" -type d -name tests -prune -exec rm -rf {} + \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +
# What the runtime never loads (torch 2.13.0+cpu: pip installs ~1 GB, ~630 MB are kept):
#   __pycache__      165 MB  bytecode pip compiled at install (PYTHONDONTWRITEBYTECODE below)
#   torch/test        83 MB  torch's C++ test binaries
#   torch/include     62 MB  C++ headers, for building extensions and torch.compile's C++ code: unused
#   torch/bin         50 MB  test binaries and protoc; torch_shm_manager stays (tensor sharing)
#   */tests           23 MB  the test suites of numpy, sympy, networkx...
#   pip                8 MB  the installer itself: nothing is installed at run time
# (setuptools stays: torch declares it)

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CHARRNN_MODEL_STORE=/data/model_store CHARRNN_DEVICE=cpu
# a fixed numeric uid:gid, so USER is checkable as non-root (runAsNonRoot) and volume ownership is stable
RUN groupadd --gid 10001 charrnn \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 charrnn \
    && mkdir -p /data/model_store \
    && chown 10001:10001 /data/model_store
COPY --from=builder /opt/venv /opt/venv
# numba's compiled decoding code (app/lm/fastpath.py, fastpath_large.py), made now for this build machine's kind of CPU;
# on another CPU, or where this directory is read-only (then the temporary directory is used), the
# service compiles it while loading its model, about 10 s per dtype
ENV NUMBA_CACHE_DIR=/opt/numba-cache
RUN mkdir -p /opt/numba-cache && chown 10001:10001 /opt/numba-cache
USER 10001:10001
RUN python3 -c "from app.lm import generate; generate.precompile()"
WORKDIR /home/charrnn
VOLUME ["/data/model_store"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["charrnn", "serve", "--host", "0.0.0.0", "--port", "8000"]
