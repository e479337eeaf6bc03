# spine-gateway: the DICOM node (port 11112) with its health/metrics/API endpoint (port 8080).
#
#   docker build -t spine-gateway .
#   docker run -v $PWD/config:/etc/spine-gateway:ro -v gateway-data:/var/lib/spine-gateway \
#              -p 11112:11112 -p 8080:8080 spine-gateway
#
# The configuration is read from /etc/spine-gateway/gateway.yaml. The working directory is the data volume,
# so the default relative paths (var/spool, var/gateway.db, var/log/routing.jsonl) land in it. For the
# health endpoint to be reachable through -p 8080, set http.host to 0.0.0.0 in that file (the HEALTHCHECK
# below calls 127.0.0.1 from inside the container and works either way).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/spine-gateway

# System packages the node needs: tesseract (OCR of burned-in text; tesserocr compiles against it) and the
# notes PDF's fonts.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng libtesseract-dev \
       libleptonica-dev pkg-config g++ fonts-dejavu-core fonts-wqy-microhei \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: they change far less often than the code.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . ./
# The portal's DICOM viewer, fetched at build time (pinned, integrity-checked), served by the node itself.
RUN python scripts/install-viewer.py \
    && pip install --no-deps --no-build-isolation . \
    && groupadd --system gateway \
    && useradd --system --gid gateway --home-dir /var/lib/spine-gateway --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/spine-gateway /var/lib/spine-gateway \
    && chown gateway:gateway /var/lib/spine-gateway

ENV SPINE_GATEWAY_CONFIG=/etc/spine-gateway/gateway.yaml
USER gateway
WORKDIR /var/lib/spine-gateway
VOLUME ["/etc/spine-gateway", "/var/lib/spine-gateway"]
EXPOSE 11112 8080

# /healthz answers 200 only when the database, the SCP and the spool's free space are all fine.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=5).status == 200 else 1)"]

CMD ["spine-gateway", "--config", "/etc/spine-gateway/gateway.yaml", "serve"]
