FROM ubuntu
RUN echo hi
FROM alpine:latest AS second
RUN echo there
FROM second
CMD echo done
