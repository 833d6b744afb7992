# A local stand-in for python:3.11-slim-bookworm, for machines that cannot pull from a
# registry (images/local/build.sh base). Like the real image: bookworm with CPython 3.11 built
# from source in /usr/local, and its runtime libraries from Debian. The CPython is the one
# that runs this project's tests here (cpython.tar, made by build.sh from its sys.base_prefix);
# where that is no such build, DEBIAN_PYTHON=1 takes Debian's python3.11 (3.11.2: without
# tarfile's extraction filters, which NeMo uses to restore a model). Never pushed.
ARG DEBIAN_IMAGE=localhost/asrflow-base/debian:bookworm
FROM ${DEBIAN_IMAGE}

ARG DEBIAN_PYTHON=0

# hadolint ignore=DL3008,SC2086
RUN apt-get update \
    && if [ "$DEBIAN_PYTHON" = 1 ]; then debian_python="python3.11 python3.11-venv"; fi \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates netbase tzdata libssl3 libffi8 libsqlite3-0 libbz2-1.0 liblzma5 zlib1g \
       libreadline8 libncursesw6 libuuid1 libexpat1 libnsl2 libtirpc3 libcrypt1 $debian_python \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

ADD cpython.tar /usr/local/
RUN if [ "$DEBIAN_PYTHON" = 1 ]; then ln -s /usr/bin/python3.11 /usr/local/bin/python3.11; fi \
    && ldconfig \
    && ln -s python3.11 /usr/local/bin/python3 \
    && ln -s python3 /usr/local/bin/python \
    && python3 -c "import ssl, sqlite3, lzma, bz2, ctypes, venv, sys; print(sys.version)"

ENV LANG=C.UTF-8
CMD ["python3"]
