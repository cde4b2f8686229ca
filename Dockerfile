# syntax=docker/dockerfile:1
# Two images from one build:
#   docker build --target operator -t conveyor-operator .   # control plane: no torch (~200 MB)
#   docker build --target trainer  -t conveyor-trainer  .   # data plane: torch, scikit-learn, serving
# Both run as the non-root user 10001 (what the chart and the workload pods' securityContext expect)
# and need no writable root filesystem beyond /tmp.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
RUN groupadd --gid 10001 conveyor && useradd --uid 10001 --gid 10001 --no-create-home \
    --home-dir /tmp --shell /usr/sbin/nologin conveyor

# One wheel holds both source roots (conveyor.operator and conveyor.trainer).
FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator operator
COPY trainer trainer
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base AS operator
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
USER 10001:10001
EXPOSE 8080 8081 8082
ENTRYPOINT ["conveyor"]
CMD ["operator"]

FROM base AS trainer
# The default index's torch wheels carry CUDA (for GPU nodes); for CPU-only images pass
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_URL=""
COPY --from=build /wheels /wheels
RUN set -e; wheel="$(ls /wheels/*.whl)"; \
    if [ -n "$TORCH_INDEX_URL" ]; then extra="--extra-index-url $TORCH_INDEX_URL"; else extra=""; fi; \
    pip install $extra "conveyor[trainer] @ file://$wheel" && rm -rf /wheels
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "conveyor.trainer"]
