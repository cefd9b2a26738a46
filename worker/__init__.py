"""The whisperfarm worker: pulls chunk jobs from a coordinator, transcribes them with
faster-whisper and posts the results. Run it as ``python -m worker``; it is configured
only by environment variables (see ``worker.config``), so the same command runs locally,
in the Docker image and on a Fly Machine."""
