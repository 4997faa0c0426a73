-- pgsluice sealed claims: installed by `pgsluice install-sql --config FILE --database-url URL`
-- as a database owner (never as a role agents act as). Running it again changes nothing but
-- the key, which it takes from the configuration.
--
-- The proxy calls pgsluice.seal(claims, counter, mac) ahead of each token client's first
-- statement on a server, with mac = HMAC-SHA-256(key, pid || ':' || counter || ':' || claims).
-- seal() checks the mac and that the counter exceeds the last one this backend accepted, then
-- records the claims in a table only it (its owner) can write. pgsluice.claims() reads them.

CREATE SCHEMA IF NOT EXISTS pgsluice;
REVOKE CREATE ON SCHEMA pgsluice FROM PUBLIC;
GRANT USAGE ON SCHEMA pgsluice TO PUBLIC;

-- HMAC's padded keys: (key XOR 0x36..) and (key XOR 0x5c..), 64 bytes each.
CREATE TABLE IF NOT EXISTS pgsluice.seal_key (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    inner_pad bytea NOT NULL CHECK (length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (length(outer_pad) = 64)
);

-- One row per backend: the claims its current client carries ('null' for none).
CREATE UNLOGGED TABLE IF NOT EXISTS pgsluice.sealed (
    pid integer PRIMARY KEY,
    counter bigint NOT NULL,
    claims jsonb NOT NULL
);

REVOKE ALL ON pgsluice.seal_key, pgsluice.sealed FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgsluice.seal(claims text, counter bigint, mac text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k record;
    expected text;
BEGIN
    SELECT inner_pad, outer_pad INTO k FROM pgsluice.seal_key;
    IF NOT FOUND OR claims IS NULL OR counter IS NULL OR mac IS NULL THEN
        RAISE EXCEPTION 'pgsluice: claims seal rejected' USING ERRCODE = '28000';
    END IF;
    expected := encode(sha256(k.outer_pad || sha256(k.inner_pad || convert_to(
        pg_backend_pid()::text || ':' || counter::text || ':' || claims, 'UTF8'))), 'hex');
    -- Hashes compared, not the macs: the time taken says nothing of a common prefix.
    IF sha256(convert_to(expected, 'UTF8')) <> sha256(convert_to(lower(mac), 'UTF8')) THEN
        RAISE EXCEPTION 'pgsluice: claims seal rejected' USING ERRCODE = '28000';
    END IF;
    INSERT INTO pgsluice.sealed AS s (pid, counter, claims)
    VALUES (pg_backend_pid(), counter, claims::jsonb)
    ON CONFLICT (pid) DO UPDATE
        SET counter = excluded.counter, claims = excluded.claims
        WHERE s.counter < excluded.counter;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsluice: claims seal replayed' USING ERRCODE = '28000';
    END IF;
END
$$;

-- The claims of this backend's client (NULL for none).
CREATE OR REPLACE FUNCTION pgsluice.claims()
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT nullif(claims, 'null'::jsonb) FROM pgsluice.sealed WHERE pid = pg_backend_pid()
$$;

-- Each pins search_path: an agent's own operators or casts (CREATE OPERATOR in a schema it
-- owns, then SET search_path) must not change what these return.
CREATE OR REPLACE FUNCTION pgsluice.subject()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgsluice.claims() ->> 'sub' $$;

-- The subject as a uuid, like Supabase's auth.uid(); NULL when it is not one.
CREATE OR REPLACE FUNCTION pgsluice.uid()
RETURNS uuid
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN s ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                THEN s::uuid END
    FROM (SELECT pgsluice.subject() AS s) AS sub
$$;

CREATE OR REPLACE FUNCTION pgsluice.role()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pgsluice.claims() ->> 'role' $$;

REVOKE ALL ON FUNCTION pgsluice.seal(text, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgsluice.seal(text, bigint, text) TO PUBLIC;
