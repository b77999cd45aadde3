# ncsweep image (API, workers, reconciler, migrations). TORCH_VARIANT picks the PyTorch wheel index:
#   docker build --build-arg TORCH_VARIANT=cpu .      (API, CPU workers; small)
#   docker build --build-arg TORCH_VARIANT=cu126 .    (GPU workers; any cu12x index of download.pytorch.org)
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTORCH_NVML_BASED_CUDA_CHECK=1 NCSWEEP_HOME=/data NCSWEEP_ARTIFACTS_DIR=/data/artifacts

WORKDIR /app
# torch/torchvision first, from the variant's index (the pinned versions of pyproject.toml); the
# project install then finds them satisfied (a local label like +cpu matches ==2.14.1).
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md alembic.ini ./
COPY nc_core ./nc_core
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
RUN pip install . && useradd --create-home --uid 1000 ncsweep && mkdir -p /data/artifacts /data/datasets \
    && chown -R ncsweep /data
USER ncsweep

EXPOSE 8765
CMD ["uvicorn", "--factory", "service.app:create_app", "--host", "0.0.0.0", "--port", "8765"]
