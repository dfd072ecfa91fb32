# syntax=docker/dockerfile:1
FROM node:20.11-alpine3.19
ENV npm_config_registry=https://registry.npmmirror.com
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
COPY . .
USER node
CMD ["node", "index.js"]
