# volkeep's image, for those who have a registry:  docker build -t volkeep:local .
# Without one, scripts/build-volkeep-image.sh builds the same image from Debian's packages.
# It runs `volkeep run`; deploy/swarm/stack.yml and docs/swarm.md say how to deploy it.
FROM python:3.11-slim
COPY pyproject.toml README.md /src/
COPY daemon /src/daemon
# tzdata: the policies' time zones (the slim image has no zoneinfo database)
RUN pip install --no-cache-dir /src tzdata && rm -rf /src
ENV VOLKEEP_CONFIG=/etc/volkeep VOLKEEP_STATE_DIR=/var/lib/volkeep
ENTRYPOINT ["volkeep"]
CMD ["run"]
