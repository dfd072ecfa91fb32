FROM python:3.12
RUN apt-get update
RUN apt-get install -y libpq-dev gcc
WORKDIR /app
COPY . /app
RUN pip install -r requirements.txt
ENV FLASK_APP=app.py
CMD flask run --host=0.0.0.0
