# syntax=docker/dockerfile:1
# OtpEmail: compiled JavaScript on Node 24, run as a non-root user.
#
#   docker build -t otp-email .
#   docker compose up --build        (the whole stack: see docker-compose.yml)
#
# Stages: `build` compiles TypeScript (src/ and the generated gen/) to dist/
# with every dependency; `deps` installs the production dependencies only;
# the final image holds those, dist/ and the health-check script. No
# TypeScript, no dev tools, no .proto files at run time.

ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY gen ./gen
COPY src ./src
RUN npm run build

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE}
LABEL org.opencontainers.image.title="otp-email" \
      org.opencontainers.image.description="gRPC service that emails one-time codes and reports what happened to each email"
ENV NODE_ENV=production \
    GRPC_ADDR=0.0.0.0:50051 \
    METRICS_ADDR=0.0.0.0:9464
WORKDIR /app
# Owned by root and read-only for the service user: the process cannot alter its own code.
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
# build-if-needed.mjs: `npm run doctor`, `npm run suppression` and `npm run deliveries` run in the image too (it compiles nothing here).
COPY scripts/healthcheck.mjs scripts/build-if-needed.mjs ./scripts/
# `node` (uid 1000) comes with the official image.
USER node
# gRPC (GRPC_ADDR), Prometheus /metrics (METRICS_ADDR) and the bounce intake (SMTP) where
# docker-compose.yml and deploy/kubernetes put it, BOUNCE_SMTP_ADDR=0.0.0.0:2525 (off unless set).
EXPOSE 50051 9464 2525
# A real grpc.health.v1.Health/Check: healthy only while the service reports
# SERVING (Redis connected, the SMTP relay usable, not shutting down).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "scripts/healthcheck.mjs", "--timeout", "3000"]
# --import starts OpenTelemetry before grpc-js and ioredis load (see src/telemetry/bootstrap.ts).
# The V8 heap bounds are the same as `npm start`'s (README, Performance: memory): Node 24
# sizes the young generation from the machine's memory, not the container's, and lets
# the old one grow to 4x the live heap without a cap. To change them, override the
# command (Node gives command-line flags precedence over NODE_OPTIONS).
# SIGTERM drains in-flight sends within SHUTDOWN_GRACE, then exports buffered spans (up to 5 s):
# give `docker stop` (or terminationGracePeriodSeconds) SHUTDOWN_GRACE plus 10 s.
STOPSIGNAL SIGTERM
CMD ["node", "--max-semi-space-size=32", "--max-old-space-size=1024", "--import", "./dist/src/telemetry/bootstrap.js", "dist/src/main.js"]
