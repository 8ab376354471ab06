-- Spillway catalog, schema 1 (PostgreSQL). Applied by `CatalogDb::migrate` and recorded in
-- spillway_schema_migrations; never edit a released migration, add the next one.

-- One row: the catalog's version, bumped by every write inside its transaction. The row lock
-- that UPDATE takes serializes writers until they commit, so versions become visible in
-- order (see src/postgres.rs).
CREATE TABLE spillway_catalog_meta (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO spillway_catalog_meta (id, version) VALUES (1, 0);

-- Every entry, live or deleted (a tombstone keeps its key and gets a new version so pollers
-- see the deletion). kind/scope/id: see src/row.rs. "C" collation: key order is byte order,
-- the same as SQLite's and Rust's, so paging agrees everywhere.
CREATE TABLE spillway_catalog_entries (
    kind TEXT COLLATE "C" NOT NULL CHECK (kind IN ('tenant', 'user', 'api_key')),
    scope TEXT COLLATE "C" NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    body JSONB,
    version BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (kind, scope, id),
    CHECK (deleted = (body IS NULL))
);

-- The change feed: WHERE version > $1 ORDER BY version.
CREATE UNIQUE INDEX spillway_catalog_entries_version ON spillway_catalog_entries (version);
