# rivbulk: one image for the code location (gRPC), the webserver, the daemon and the run worker
# (the ECS task EcsRunLauncher starts runs `dagster api execute_run` in this same image).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

WORKDIR /opt/rivbulk

# Runtime dependencies only (no dev extra): dagster, dagster-aws, dagster-postgres, boto3, ...
COPY pyproject.toml README.md ./
COPY rivbulk_pipeline ./rivbulk_pipeline
RUN pip install --no-compile . \
    && groupadd --system --gid 10001 rivbulk \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/rivbulk rivbulk \
    && mkdir -p "$DAGSTER_HOME" \
    && chown 10001:10001 "$DAGSTER_HOME"

# The production instance (Postgres, EcsRunLauncher, S3 compute logs, the riv_gateway pool).
COPY --chown=10001:10001 deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/dagster_home/

USER 10001:10001
EXPOSE 4000

# Default: serve the code location over gRPC. The same image runs the webserver
# (`dagster-webserver -w $DAGSTER_HOME/workspace.yaml -h 0.0.0.0 -p 3000`), the daemon
# (`dagster-daemon run -w $DAGSTER_HOME/workspace.yaml`), a batch load (`rivbulk load`)
# and, started by EcsRunLauncher, each run (`dagster api execute_run ...`).
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "rivbulk_pipeline.definitions", "--location-name", "rivbulk"]
