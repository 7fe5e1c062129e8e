"""Which container images run a database: their files are not consistent on disk while the
server runs, so a backup of their volume needs the container stopped or a dump first.
`init` proposes `stop_containers` for them; `validate` and each backup warn of one that
would be backed up live."""

from __future__ import annotations

# By the last part of the image's repository ("postgres" in "docker.io/library/postgres:16").
DATABASE_IMAGES = frozenset(
    {
        "postgres",
        "postgis",
        "timescaledb",
        "mysql",
        "mariadb",
        "percona",
        "percona-server",
        "mongo",
        "mongodb-community-server",
        "redis",
        "redis-stack-server",
        "valkey",
        "keydb",
        "couchdb",
        "cassandra",
        "scylla",
        "elasticsearch",
        "opensearch",
        "influxdb",
        "neo4j",
        "clickhouse-server",
        "cockroach",
        "etcd",
        "rethinkdb",
        "arangodb",
        "questdb",
    }
)


def image_repository(image: str) -> str:
    """Given an image reference ("registry:5000/library/postgres:16@sha256:..."), return the
    last part of its repository ("postgres")."""
    repository = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return repository.split(":", 1)[0].lower()


def is_database_image(image: str) -> bool:
    """Given an image reference, say whether it is one of a well-known database server."""
    return image_repository(image) in DATABASE_IMAGES
