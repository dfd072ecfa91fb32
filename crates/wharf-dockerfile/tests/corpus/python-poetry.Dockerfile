FROM python:3.11-slim AS builder
RUN pip install poetry==1.8.3
WORKDIR /app
COPY . .
RUN poetry install --no-root --only main

FROM python:3.11-slim
COPY --from=builder /app /app
WORKDIR /app
CMD ["python", "-m", "service"]
