# syntax=docker/dockerfile:1
#
# One image for the four services; the command names the service module:
#
#   docker run IMAGE                        # services.orchestrator (the default), port 50051
#   docker run IMAGE services.tools         # 50052
#   docker run IMAGE services.tts           # 50053
#   docker run IMAGE services.emotion       # 50054
#
# ENTRYPOINT is `python -m`, so a Kubernetes container sets only `args: ["services.tools"]`
# and leaves `command` unset. The root filesystem can be read-only: the only place written at
# run time is /tmp (py3langid unpacks its ~65 MB model there at start; espeak-ng's PulseAudio
# client keeps a small directory there), so mount an emptyDir at /tmp.
#
# Every dictionary, voice, lexicon and model ships inside the image and nothing is downloaded at
# start: the last build step loads them all with the network off, as the services' user, and
# the build fails if one is missing (scripts/check_offline_data.py).
#
# The base is pinned by tag. To pin its digest as well (not looked up here: the build machine
# had no registry access), run `docker buildx imagetools inspect python:3.11-slim-bookworm` and
# append `@sha256:<digest>` to both FROM lines.

# -- builder: the locked dependencies in a venv, and the generated gRPC code --------------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The lock is the whole set (--no-deps; `pip check` proves it complete) and every file is
# checked against its hash. Two of its packages (ipadic, pymlask: pure Python with data) are
# sdists only; they build against the lock's own setuptools, installed first, rather than an
# unhashed one that an isolated build would fetch. Nothing is compiled, so no stage needs a
# compiler; a future dependency that has to be compiled fails here for want of one.
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    awk '/^[^ #]/ { keep = /^setuptools==/ } keep' /tmp/requirements.lock > /tmp/build.lock \
    && pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/build.lock \
    && pip install --require-hashes --no-deps --no-build-isolation -r /tmp/requirements.lock \
    && pip check

# The generated code, made as `make proto` makes it but without the mypy stubs (dev only).
# descriptors.binpb with source info is read at run time: the proto comments are the LLM's tool
# descriptions.
WORKDIR /app
COPY protos/ protos/
RUN mkdir -p chatagent/v1 \
    && python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
        --include_source_info --descriptor_set_out=chatagent/v1/descriptors.binpb \
        protos/chatagent/v1/*.proto \
    && touch chatagent/__init__.py chatagent/v1/__init__.py chatagent/py.typed

# The project runs from its source tree on PYTHONPATH rather than being pip-installed: a wheel
# of it would leave out chatagent/v1/descriptors.binpb (pyproject declares no package data).
COPY services/ services/
COPY scripts/ scripts/
# Bytecode made now: at run time the tree is read-only and could not cache it. Checked against
# a hash of the source, not its timestamp, so it stays valid whatever COPY does to file times.
RUN python -m compileall -q --invalidation-mode checked-hash chatagent services scripts

# -- runtime: no compilers, only what the services run with -----------------------------------
FROM python:3.11-slim-bookworm AS runtime

# espeak-ng speaks Korean (and English when the Piper voice cannot load); it brings its voice
# data and the audio libraries it links (libpcaudio0, libpulse0, libasound2, libsonic0). The
# wheels need nothing else: their shared objects link only libc, libm, libstdc++, libgcc_s and
# zlib, all in the base image, or libraries bundled in the wheels (numpy's OpenBLAS, MeCab).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends espeak-ng \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 chatagent \
    && useradd --uid 10001 --gid 10001 --home-dir /home/chatagent --create-home \
        --shell /usr/sbin/nologin chatagent

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/chatagent /app/chatagent
COPY --from=builder /app/services /app/services
COPY --from=builder /app/scripts /app/scripts

# HOME is the user's, but nothing may need it writable: caches and configuration go to /tmp.
# XDG_CONFIG_HOME: espeak-ng's PulseAudio client creates $XDG_CONFIG_HOME/pulse on every call.
# XDG_CACHE_HOME: where onnxruntime would keep its telemetry store, which ORT_DISABLE_TELEMETRY
# turns off (it otherwise writes a device id and an SQLite event store there on session start).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/chatagent \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    ORT_DISABLE_TELEMETRY=1

WORKDIR /app
USER 10001:10001

# Everything the services load, loaded offline as they will be run: this user, no network, a
# fresh /tmp like the emptyDir (so nothing it writes stays in the image).
RUN --network=none --mount=type=tmpfs,target=/tmp python -m scripts.check_offline_data

# gRPC: orchestrator, tools, tts, emotion. Prometheus metrics: the same order.
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104

ENTRYPOINT ["python", "-m"]
CMD ["services.orchestrator"]
