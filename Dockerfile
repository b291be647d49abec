# Ki2API gateway: the API under /v1 and the web page at /, on port 8989.
#   docker build -t ki2api .
#   docker run -p 8989:8989 -e API_KEY=change-me -v "$HOME/.aws/sso/cache:/home/ki2api/.aws/sso/cache" ki2api
# The base image is pinned by digest (the multi-platform index of python:3.11-slim, Python 3.11.15
# on Debian trixie, as the official images' published record lists it); the tag is kept for the
# reader. To move it on: docker buildx imagetools inspect python:3.11-slim, and copy the index digest.
FROM python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False

# A non-root user whose uid matches the usual desktop user (1000), so the mounted Kiro login
# folder stays writable and refreshed tokens are written back. Override with --build-arg UID=...
ARG UID=1000
ARG GID=1000
RUN groupadd --gid "${GID}" ki2api \
    && useradd --uid "${UID}" --gid "${GID}" --create-home --shell /usr/sbin/nologin ki2api \
    && mkdir -p /home/ki2api/.aws/sso/cache /home/ki2api/.local/share/ki2api \
    && chown -R ki2api:ki2api /home/ki2api/.aws /home/ki2api/.local

WORKDIR /app
# Dependencies first: this layer is reused until requirements.txt changes. It is exported from
# uv.lock with every package pinned and hashed, so pip installs exactly what was locked.
COPY requirements.txt .
RUN pip install --require-hashes --no-deps -r requirements.txt
# The code stays root's: the user the app runs as can read it but not change it (it writes only
# to its home, where the Kiro login folder is, and /tmp).
COPY app.py README.md ./
COPY ki2api ./ki2api

USER ki2api
ENV HOME=/home/ki2api \
    HOST=0.0.0.0 \
    PORT=8989
EXPOSE 8989

# No curl in slim images: ask /health with Python's own urllib.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8989'), timeout=4)"]

CMD ["python", "app.py"]
