FROM node:20-bookworm
ARG NPM_TOKEN
ENV DATABASE_PASSWORD=changeme \
    NODE_ENV=production
ENV AWS_SECRET_ACCESS_KEY abc123
ENV PUBLIC_KEY_PATH=/keys/pub.pem
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
COPY . .
CMD ["node", "index.js"]
