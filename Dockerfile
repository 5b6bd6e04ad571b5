# The production image: every service of docker-compose.yml, without the local-only
# machinery (`iotp up`, embedded services) or the benchmarks; `iotp --help` lists only the
# commands this image can run (tests/unit/test_image_commands.py checks it). /mosquitto/auth
# belongs to iotp so that the compose volume broker-sync writes the broker's files to does.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY iotp ./iotp
COPY cli ./cli
COPY command_api ./command_api
COPY alarms ./alarms
COPY ingest ./ingest
COPY broker_identity ./broker_identity
COPY read_models ./read_models
COPY dashboard ./dashboard
COPY device_simulator ./device_simulator
COPY notifications ./notifications
RUN pip install --no-cache-dir . && useradd --system --uid 10001 iotp \
    && mkdir -p /mosquitto/auth && chown iotp /mosquitto/auth
USER iotp
ENTRYPOINT ["iotp"]
CMD ["--help"]
