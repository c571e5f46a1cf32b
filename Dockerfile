# ec2backup images (docs/deploy.md).
#
#   docker build -t ec2backup:0.1.0 .                 the product (default target `product`):
#                                                     `ec2backup worker` (the orchestrator), and
#                                                     every other command: setup, doctor, backup...
#   docker build --target lab -t ec2backup-lab:0.1.0 .   the lab AWS endpoint (`.[lab]`: moto)
#
# Base images are pinned by tag; the Python dependencies are resolved by pip within the ranges
# of pyproject.toml at build time (there is no lock file).

# ---- build: the product into a virtualenv at /opt/ec2backup ----------------------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/ec2backup
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ec2backup ./ec2backup
COPY ec2backup_lab ./ec2backup_lab
COPY workflows ./workflows
COPY activities ./activities
COPY worker_agent ./worker_agent
# A production install: no `lab` extra, so no moto.
RUN /opt/ec2backup/bin/pip install .

# ---- build-lab: the same plus the lab extra ---------------------------------------------------
FROM build AS build-lab
RUN /opt/ec2backup/bin/pip install '.[lab]'

# ---- lab: the lab AWS endpoint (compose profile `lab`) ----------------------------------------
FROM python:3.11.11-slim-bookworm AS lab
ARG EC2BACKUP_UID=1000
RUN useradd --uid "${EC2BACKUP_UID}" --create-home --home-dir /home/ec2backup \
        --shell /usr/sbin/nologin ec2backup \
    && mkdir /lab && chown ec2backup:ec2backup /lab
COPY --from=build-lab /opt/ec2backup /opt/ec2backup
ENV PATH=/opt/ec2backup/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER ec2backup
WORKDIR /home/ec2backup
VOLUME ["/lab"]
EXPOSE 4566
# Worker instances "boot" as `ec2backup agent` processes in this container: give the endpoint
# `--temporal-address` of a Temporal server they can reach.
ENTRYPOINT ["python", "-m", "ec2backup_lab.server"]
CMD ["--dir", "/lab", "--host", "0.0.0.0", "--port", "4566"]

# ---- product (default): the `ec2backup` command, as the orchestrator by default ---------------
FROM python:3.11.11-slim-bookworm AS product
# The uid matters for the read-only ~/.aws mount of docker-compose.yml: files of mode 0600 are
# readable only by their owner (most often uid 1000 on a workstation).
ARG EC2BACKUP_UID=1000
RUN useradd --uid "${EC2BACKUP_UID}" --create-home --home-dir /home/ec2backup \
        --shell /usr/sbin/nologin ec2backup
COPY --from=build /opt/ec2backup /opt/ec2backup
ENV PATH=/opt/ec2backup/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER ec2backup
WORKDIR /home/ec2backup
ENTRYPOINT ["ec2backup"]
CMD ["worker"]
