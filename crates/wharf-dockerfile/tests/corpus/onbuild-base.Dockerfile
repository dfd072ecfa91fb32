FROM node:18-alpine
WORKDIR /app
ONBUILD COPY package.json package-lock.json ./
ONBUILD RUN npm ci
ONBUILD COPY . .
ONBUILD RUN apk add git
CMD ["npm", "start"]
