# One image for Settle and for its PSP mock (docker-compose.yml runs it twice with different
# commands). TypeScript runs through tsx, so there is no build step. Not built on the machine
# where Settle is developed (it has no Docker engine); see the README.
FROM node:20-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY proto ./proto
COPY src ./src
COPY bin ./bin
COPY tsconfig.json ./
ENV NODE_ENV=production
EXPOSE 50051 8080 50052 8081
# Settle alone; the PSP mock is `node --import tsx src/psp/mock/main.ts`.
CMD ["node", "--import", "tsx", "src/main.ts", "--settle-only"]
