# bids-amyloid: image of the BIDS App; nothing is downloaded at run time.
#
#   DOCKER_BUILDKIT=1 docker build -t bids-amyloid:0.1.0 .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#       -v /data/bids:/bids:ro -v /data/out:/out \
#       bids-amyloid:0.1.0 /bids /out participant --participant-label 01
#
# Base: Debian 12 with its own Python 3.11. PyTorch's CUDA wheel from PyPI brings
# the CUDA runtime, cuDNN and NCCL; `--gpus all` (NVIDIA container toolkit) injects
# the driver, so no CUDA base image is needed. The build reaches only Debian's
# archive and PyPI (plus the Hugging Face hub for the weights, see WEIGHTS).
#
# Build arguments
#   BASE_IMAGE  a Debian 12 image (a site mirror of debian:bookworm-slim, or a local
#               `docker import` of a debootstrapped rootfs: scripts/image-test.sh)
#   WEIGHTS     biomedclip (default): fetch BiomedCLIP's vision weights into
#               /opt/weights (checksummed); none: build without them, mount them
#               at run time with -v /site/weights:/opt/weights:ro
#
# Behind a TLS-inspecting proxy, give the build your CA bundle as a BuildKit
# secret; it is mounted for the install step only and never stored in the image:
#   DOCKER_BUILDKIT=1 docker build \
#       --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t bids-amyloid:0.1.0 .

ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG WEIGHTS=biomedclip
LABEL org.opencontainers.image.title="bids-amyloid" \
      org.opencontainers.image.description="BIDS App: amyloid-beta PET positivity from MRI alone" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Debian's Python 3.11 (the version the pinned torch/torchvision wheels are built for).
# Unpinned Debian packages: a stable release only receives security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# One layer for the environment (the build context is bind-mounted, not copied):
# torch/torchvision pinned like the Makefile, the package, bids-validator-deno,
# amypet without its dependencies (only its GAAIN Centiloid VOIs are used), then
# the weights and a non-root user. HD-BET and deepbet weights come in their wheels.
RUN --mount=type=bind,target=/src,rw \
    --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then \
        export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca \
               REQUESTS_CA_BUNDLE=/run/secrets/ca CURL_CA_BUNDLE=/run/secrets/ca; \
    fi \
    && export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1" \
    && /opt/venv/bin/pip install --no-cache-dir /src "bids-validator-deno>=2.0" \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps "amypet==1.6.0" \
    && case "${WEIGHTS}" in \
         biomedclip) /opt/venv/bin/bids-amyloid-fetch-weights /opt/weights ;; \
         none) /opt/venv/bin/python -c "from bids_amyloid import weights; weights.check_hdbet()" ;; \
         *) echo "WEIGHTS must be biomedclip or none, not '${WEIGHTS}'" >&2; exit 64 ;; \
       esac \
    && /opt/venv/bin/python -c "from bids_amyloid.preproc import skullstrip as s, template as t; \
s.deepbet_weight_files(); [t.gaain_voi_path(v) for v in t.GAAIN_VOIS]; t.load_template()" \
    && chmod -R a+rX /opt/venv \
    && { [ ! -d /opt/weights ] || chmod -R a+rX /opt/weights; } \
    && groupadd --system --gid 10001 bidsapp \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin bidsapp \
    && mkdir -p /bids /out /work \
    && chown 10001:10001 /out /work \
    && /opt/venv/bin/bids-amyloid --version

# Offline at run time; every cache under /tmp, so any uid (`-u "$(id -u):$(id -g)"`),
# a read-only root file system and a read-only $HOME (Apptainer) all work.
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
    TRITON_CACHE_DIR=/tmp/bids-amyloid-cache/triton \
    DENO_DIR=/tmp/bids-amyloid-cache/deno \
    DENO_NO_UPDATE_CHECK=1

USER 10001:10001
ENTRYPOINT ["bids-amyloid"]
CMD ["--help"]
