# One image for the listener, Orthanc (+ python plugin), migrations, the web app, the delivery
# worker and the CPU model workers.
# Debian bookworm: the same Orthanc 1.10.1 / orthanc-python 4.0 / DCMTK the tests run against.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv orthanc orthanc-python orthanc-dicomweb orthanc-postgresql dcmtk \
      dicom3tools fonts-noto-cjk ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 TCP_NODELAY=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY services ./services
COPY model ./model
COPY migrations ./migrations
COPY ops ./ops
# The same uid/gid as the GPU image (services/worker/Dockerfile.gpu): every container that shares
# the storage volume reads and writes it as one user.
ARG MEDREGA_UID=10001
RUN python3.11 -m venv /opt/venv && pip install --no-cache-dir ".[cpu]" \
 && groupadd -r -g "$MEDREGA_UID" medrega && useradd -r -u "$MEDREGA_UID" -g medrega medrega \
 && mkdir -p /var/lib/medrega/storage /var/lib/orthanc /var/cache/medrega-model \
 && chown -R medrega:medrega /var/lib/medrega /var/lib/orthanc /var/cache/medrega-model
USER medrega
