FROM python:3.12-alpine
RUN apk add --update build-base libffi-dev
RUN pip install pipenv
WORKDIR /code
COPY Pipfile Pipfile.lock ./
RUN pipenv install --system --deploy
COPY . .
CMD ["python", "main.py"]
