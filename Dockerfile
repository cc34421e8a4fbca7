# Custom SDK container for Dataflow (and any portable runner), built the way Beam documents it:
# our package on python:3.11-slim, with Beam's SDK harness copied from the Beam image of the
# same version as our pin (apache-beam==2.77.0 in setup.py).
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/galaxiesml:0.1.0 .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/galaxiesml:0.1.0
FROM python:3.11-slim

COPY --from=apache/beam_python3.11_sdk:2.77.0 /opt/apache/beam /opt/apache/beam

WORKDIR /opt/galaxiesml
COPY setup.py README.md ./
COPY pipeline ./pipeline
COPY transforms ./transforms
COPY galaxiesml ./galaxiesml
RUN pip install --no-cache-dir '.[gcp]' && pip check

# glibc malloc arenas per process: see galaxiesml/memory.py MALLOC_ARENAS
ENV MALLOC_ARENA_MAX=2

ENTRYPOINT ["/opt/apache/beam/boot"]
