# syntax=docker/dockerfile:1
# The Kompaktor image: one image runs the operator (`kompaktor operator ...`) and every stage pod
# (`kompaktor stage run ...`). Build: docker build -t ghcr.io/kompaktor/kompaktor:0.1.0 .
# Multi-arch (the chart's `arm` pool): docker buildx build --platform linux/amd64,linux/arm64 .
#
# Two stages: `build` has the C++ toolchain and compiles the kernels; the final image gets only
# the finished virtual environment. Installation mirrors scripts/bootstrap.sh: torch first, from
# the PyTorch CPU index, pinned by requirements/constraints.txt so that no later resolver step can
# pull a CUDA build; then the package without build isolation, against this environment.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CONSTRAINT=/src/requirements/constraints.txt \
    PATH=/opt/kompaktor/bin:$PATH
# Unpinned apt packages (hadolint DL3008): the base image tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/kompaktor
WORKDIR /src
COPY requirements/ requirements/
# Own layers, so a source change does not re-download torch or the build tools.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
# hadolint ignore=DL3059
RUN pip install -r requirements/build.txt cmake ninja
COPY pyproject.toml README.md ./
COPY kernels/ kernels/
COPY operator/ operator/
# Not editable (the final image has no /src). cmake, ninja, scikit-build-core and nanobind are
# only needed to build (the kernels link nanobind statically): removed before the venv is copied.
RUN pip install --no-build-isolation . \
 && pip uninstall -y cmake ninja scikit-build-core nanobind

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kompaktor" \
      org.opencontainers.image.description="Kompaktor operator and stage runner" \
      org.opencontainers.image.source="https://github.com/kompaktor/kompaktor" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp: the kernels' OpenMP runtime (torch's bundled copy is only found once torch is loaded).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kompaktor \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/kompaktor --create-home \
      --shell /usr/sbin/nologin kompaktor
# Same path as in the build stage: the venv's scripts name /opt/kompaktor/bin/python.
COPY --from=build /opt/kompaktor /opt/kompaktor
ENV PATH=/opt/kompaktor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kompaktor
# Smoke test in the final image itself: the CLI runs, the kernels load (libgomp found), and the
# operator's handlers import.
RUN kompaktor --version \
 && python -c "import kompaktor_kernels, kompaktor.controller.handlers"
# Numeric, so the kubelet can check runAsNonRoot without resolving a name.
USER 10001:10001
WORKDIR /home/kompaktor
ENTRYPOINT ["kompaktor"]
CMD ["--help"]
