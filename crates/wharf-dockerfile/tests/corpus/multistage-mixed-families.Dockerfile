FROM python:3.12-slim AS wheels
WORKDIR /w
COPY requirements.txt .
RUN pip wheel -r requirements.txt -w /wheels

FROM node:20-alpine AS assets
WORKDIR /a
COPY package.json yarn.lock ./
RUN yarn install
COPY web/ ./web/
RUN yarn build

FROM python:3.12-slim
RUN apt-get update && apt-get install -y --no-install-recommends libjpeg62-turbo && rm -rf /var/lib/apt/lists/*
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir /wheels/*
COPY --from=assets /a/dist /srv/static
COPY . /srv
CMD ["python", "/srv/app.py"]
