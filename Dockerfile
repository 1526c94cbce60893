# syntax=docker/dockerfile:1

# ---- build: install all dependencies, compile TypeScript, drop dev dependencies
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# npm ci applies patches/ (patch-package, the postinstall script)
COPY patches ./patches
RUN npm ci
COPY tsconfig.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

# ---- runtime: compiled code and production dependencies only
FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production \
    NODE_OPTIONS=--enable-source-maps \
    SLUICE_CONFIG=/etc/sluice/sluice.yaml
WORKDIR /app

# /etc/sluice holds the (read-only, mounted) config; /var/lib/sluice is the
# dataDir and must be writable by the unprivileged user. A named volume mounted
# there starts out with this ownership.
RUN mkdir -p /etc/sluice /var/lib/sluice && chown node:node /var/lib/sluice

# Application files stay owned by root: the service user can read, not modify them.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist

USER node
EXPOSE 2525

# Healthy when the SMTP listener on 2525 answers with a "220" greeting.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["node", "-e", "const s=require('net').connect(2525,'127.0.0.1');s.setTimeout(5000,()=>process.exit(1));s.on('error',()=>process.exit(1));s.once('data',(d)=>{const ok=String(d).startsWith('220');s.end('QUIT\\r\\n',()=>process.exit(ok?0:1))})"]

# one GC thread: see docs/deployment.md ("Node's garbage collector")
ENTRYPOINT ["node", "--single-threaded-gc", "dist/cli.js"]
CMD ["start", "--config", "/etc/sluice/sluice.yaml"]
