FROM debian:bullseye
MAINTAINER ops@example.com
RUN apt-get update
RUN apt-get install -y nginx
RUN apt-get install -y supervisor
RUN mkdir -p /var/log/supervisor
RUN mkdir -p /var/www/app
RUN useradd -m app
ADD supervisord.conf /etc/supervisor/conf.d/supervisord.conf
ADD nginx.conf /etc/nginx/nginx.conf
RUN chown -R app /var/www/app
RUN cd /var/www/app && touch index.html
EXPOSE 80
CMD ["/usr/bin/supervisord"]
