# Custom SDK container for Dataflow (and any portable runner), built the way Beam documents it:
# our package on python:<version>-slim, with Beam's SDK harness copied from the Beam image of the
# same Beam version as our pin (apache-beam==2.77.0 in setup.py) and the same Python. Build it with
# the Python of the environment you launch from (3.11, 3.12 or 3.13: setup.py's PYTHONS), so that the
# launcher and the workers agree:
#
#   docker build --build-arg PYTHON_VERSION=3.11 -t REGION-docker.pkg.dev/PROJECT/REPO/galaxiesml:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/galaxiesml:0.1.0
ARG PYTHON_VERSION=3.11
FROM apache/beam_python${PYTHON_VERSION}_sdk:2.77.0 AS beam_sdk

FROM python:${PYTHON_VERSION}-slim

COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam

WORKDIR /opt/galaxiesml
COPY setup.py README.md ./
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY galaxiesml ./galaxiesml
RUN pip install --no-cache-dir '.[gcp]' && pip check

# glibc malloc arenas per process: see galaxiesml/memory.py MALLOC_ARENAS
ENV MALLOC_ARENA_MAX=2

ENTRYPOINT ["/opt/apache/beam/boot"]
