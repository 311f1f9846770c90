# qoder-exporter container image.
#
#   docker build -t qoder-exporter .
#   docker run -p 7637:7637 -v "$PWD/config.yml:/etc/qoder-exporter/config.yml:ro" \
#     -v "$PWD/qoder_pat:/run/secrets/qoder_pat:ro" qoder-exporter
#   docker run -p 7637:7637 qoder-exporter --demo
#
# BASE_IMAGE must provide python3 (3.10+) with the venv module; both stages use it, so the
# venv's interpreter link is valid in the final image. Default: the official slim image.
# scripts/ci-docker builds a registry-free Debian base for CI (python3 in /usr/bin).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Pinned dependencies, wheels only: nothing is compiled, so no compiler is needed anywhere.
RUN /opt/venv/bin/python -m pip install --only-binary=:all: -r /tmp/requirements.txt \
 && /opt/venv/bin/python -m pip uninstall --yes pip setuptools \
 && rm -rf /opt/venv/bin/pip* /opt/venv/bin/activate* /opt/venv/bin/Activate.ps1
COPY exporter.py /app/exporter.py
COPY qoder_exporter/ /app/qoder_exporter/
# Bytecode compiled at build time: the read-only runtime filesystem never needs a write.
RUN /opt/venv/bin/python -m compileall -q /app/qoder_exporter /opt/venv

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="qoder-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Qoder Cloud Agents deployment runs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
# PATH spelled out: an imported base image (scripts/ci-docker) defines none.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    QODER_HEALTHCHECK_URL=http://127.0.0.1:7637/-/healthy
WORKDIR /app
# Numeric so that runAsNonRoot can verify it; no passwd entry is needed.
USER 65532:65532
EXPOSE 7637
# Python's standard library (slim images have no curl); proxies ignored: the target is local.
# Set QODER_HEALTHCHECK_URL when --web.listen-address is not :7637, or to https://... with
# --web.config.file TLS (the certificate is not verified: this checks liveness, on loopback).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import os, ssl, urllib.request as u; u.build_opener(u.ProxyHandler({}), u.HTTPSHandler(context=ssl._create_unverified_context())).open(os.environ['QODER_HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["/opt/venv/bin/python", "/app/exporter.py"]
CMD ["--config", "/etc/qoder-exporter/config.yml"]
