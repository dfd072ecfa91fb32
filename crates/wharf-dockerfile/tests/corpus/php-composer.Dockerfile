FROM php:8.3-fpm
RUN apt-get update && apt-get install -y --no-install-recommends libzip-dev unzip \
 && docker-php-ext-install zip
COPY --from=composer:2 /usr/bin/composer /usr/bin/composer
WORKDIR /var/www
COPY . .
RUN composer install --no-dev --optimize-autoloader
CMD ["php-fpm"]
