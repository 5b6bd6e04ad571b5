FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY iotp ./iotp
COPY command_api ./command_api
COPY ingest ./ingest
COPY read_models ./read_models
COPY dashboard ./dashboard
COPY device_simulator ./device_simulator
RUN pip install --no-cache-dir . && useradd --system --uid 10001 iotp
USER iotp
ENTRYPOINT ["iotp"]
CMD ["--help"]
