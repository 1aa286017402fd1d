-- docker-compose.yml: the registry's own database beside kassa's (scripts/dev creates the same).
CREATE DATABASE apicurio;
