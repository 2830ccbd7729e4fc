# fedcare operator image: `fedcare hub` and `fedcare agent` (the chart picks one by mode).
# Build: docker build -t fedcare:dev .
# Only the operator (+ the S3 client of the artifact store): no train/test extras, so no torch.
# Training runs in its own image.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/fedcare
WORKDIR /src
# Dependencies first, pinned by constraints.txt, so code edits reuse this layer.
COPY pyproject.toml constraints.txt README.md ./
COPY operator ./operator
# Not editable: the final image carries the installed package, not /src. pip compiles the
# bytecode here, because the running container's root filesystem is read-only.
RUN /opt/fedcare/bin/pip install -c constraints.txt ".[s3]" \
    && /opt/fedcare/bin/fedcare --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fedcare" \
      org.opencontainers.image.description="fedcare operator: hub controllers and site agent" \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532 is the conventional "nonroot" uid; the chart sets runAsUser 65532 to match.
RUN groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/fedcare /opt/fedcare
# No .pyc writes at run time (read-only root FS); HOME on /tmp, the only writable mount.
ENV PATH=/opt/fedcare/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["fedcare"]
CMD ["--help"]
