FROM maven:3.9-eclipse-temurin-21 AS build
WORKDIR /workspace
COPY . .
RUN mvn -B dependency:go-offline
RUN mvn -B package -DskipTests

FROM eclipse-temurin:21-jre
RUN apt-get update && apt-get install -y curl
WORKDIR /app
COPY --from=build /workspace/target/*.jar app.jar
ENTRYPOINT java -jar /app/app.jar
