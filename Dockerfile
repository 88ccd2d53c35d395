# alert-bridge container: gunicorn as a non-root user, state on a volume, rules mountable.
#   docker build -t alert-bridge .
#   docker run --read-only -p 9095:9095 -v bridge-state:/var/lib/alert-bridge \
#     -v $PWD/rules.yaml:/etc/alert-bridge/rules.yaml:ro -v $PWD/secrets:/run/secrets:ro \
#     -e BRIDGE_API_TOKEN_FILE=/run/secrets/api-token \
#     -e BRIDGE_WEBHOOK_TOKENS_FILE=/run/secrets/webhook-tokens alert-bridge

# The base image is pinned to an exact release; pin it to its digest too where your registry
# allows (docker buildx imagetools inspect python:3.11.10-slim-bookworm), and rebuild for fixes.
ARG BASE=python:3.11.10-slim-bookworm

# Build stage: the only place with pip's build machinery.
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/alert-bridge --create-home bridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY rules.yaml /etc/alert-bridge/rules.yaml
ENV BRIDGE_RULES=/etc/alert-bridge/rules.yaml \
    BRIDGE_STATE=/var/lib/alert-bridge/bridge-state.db \
    BRIDGE_BIND=0.0.0.0:9095 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/alert-bridge"]
USER bridge
WORKDIR /var/lib/alert-bridge
EXPOSE 9095
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9095/-/healthy', timeout=4)"]
ENTRYPOINT ["alert-bridge"]
CMD ["serve"]
