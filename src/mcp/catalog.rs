//! The catalog queries behind list_schemas, list_tables, describe_table and the schema
//! resources. They run as the identity's role, like any other call, so an agent sees the
//! schemas and tables its role can use; names come in as bind parameters.

/// Schemas other than PostgreSQL's own.
const USER_SCHEMA: &str = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'";

/// A relation kind as words.
const KIND: &str = "CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' \
                    WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' \
                    WHEN 'f' THEN 'foreign table' END";

/// Schemas the role may use: schema, owner, comment.
pub fn list_schemas() -> String {
    format!(
        "SELECT n.nspname AS schema, pg_catalog.pg_get_userbyid(n.nspowner) AS owner, \
         pg_catalog.obj_description(n.oid, 'pg_namespace') AS comment \
         FROM pg_catalog.pg_namespace n \
         WHERE {USER_SCHEMA} AND pg_catalog.has_schema_privilege(n.oid, 'USAGE') ORDER BY 1"
    )
}

/// Tables, views and the like the role has a privilege on, in schema $1 (NULL: all).
pub fn list_tables() -> String {
    format!(
        "SELECT n.nspname AS schema, c.relname AS name, {KIND} AS kind, \
         GREATEST(c.reltuples, 0)::bigint AS row_estimate, c.relrowsecurity AS rls_enabled, \
         pg_catalog.obj_description(c.oid, 'pg_class') AS comment \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMA} \
         AND ($1::text IS NULL OR n.nspname = $1::text) \
         AND pg_catalog.has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE') \
         ORDER BY 1, 2"
    )
}

/// One row, one json column: table $2 of schema $1 with its columns, keys, indexes,
/// foreign keys and row level security policies (and whether each applies to the role);
/// no row when there is no such table.
pub fn describe_table() -> String {
    let columns = "SELECT pg_catalog.json_agg(pg_catalog.json_build_object('name', a.attname, \
         'type', pg_catalog.format_type(a.atttypid, a.atttypmod), 'nullable', NOT a.attnotnull, \
         'default', pg_catalog.pg_get_expr(d.adbin, d.adrelid), \
         'comment', pg_catalog.col_description(a.attrelid, a.attnum)) ORDER BY a.attnum) \
         FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d \
         ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped";
    let primary_key = "SELECT pg_catalog.json_agg(a.attname ORDER BY k.ord) \
         FROM pg_catalog.pg_constraint con \
         CROSS JOIN LATERAL pg_catalog.unnest(con.conkey) WITH ORDINALITY k(attnum, ord) \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum \
         WHERE con.conrelid = c.oid AND con.contype = 'p'";
    let indexes = "SELECT pg_catalog.json_agg(pg_catalog.json_build_object('name', i.relname, \
         'definition', pg_catalog.pg_get_indexdef(x.indexrelid), 'unique', x.indisunique, \
         'primary', x.indisprimary) ORDER BY i.relname) \
         FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid \
         WHERE x.indrelid = c.oid";
    let foreign_keys = "SELECT pg_catalog.json_agg(pg_catalog.json_build_object(\
         'name', con.conname, 'definition', pg_catalog.pg_get_constraintdef(con.oid), \
         'references', con.confrelid::pg_catalog.regclass::text) ORDER BY con.conname) \
         FROM pg_catalog.pg_constraint con WHERE con.conrelid = c.oid AND con.contype = 'f'";
    let policies = "SELECT pg_catalog.json_agg(pg_catalog.json_build_object(\
         'name', p.polname, \
         'command', CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' \
                    WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END, \
         'permissive', p.polpermissive, \
         'roles', (SELECT pg_catalog.json_agg(CASE WHEN r = 0 THEN 'public' \
                   ELSE pg_catalog.pg_get_userbyid(r) END) FROM pg_catalog.unnest(p.polroles) r), \
         'using', pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
         'with_check', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), \
         'applies_to_current_role', 0 = ANY (p.polroles) OR EXISTS (SELECT 1 \
              FROM pg_catalog.unnest(p.polroles) r \
              WHERE r <> 0 AND pg_catalog.pg_has_role(CURRENT_USER, r, 'MEMBER'))) \
         ORDER BY p.polname) FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid";
    format!(
        "SELECT pg_catalog.json_build_object('schema', n.nspname, 'name', c.relname, \
         'kind', {KIND}, 'comment', pg_catalog.obj_description(c.oid, 'pg_class'), \
         'row_estimate', GREATEST(c.reltuples, 0)::bigint, \
         'rls_enabled', c.relrowsecurity, 'rls_forced', c.relforcerowsecurity, \
         'columns', ({columns}), 'primary_key', ({primary_key}), 'indexes', ({indexes}), \
         'foreign_keys', ({foreign_keys}), 'policies', ({policies})) AS description \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1::text AND c.relname = $2::text \
         AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
    )
}

/// One row, one json column: every table the role may use with its columns (a database's
/// schema resource).
pub fn schema_resource() -> String {
    format!(
        "SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(\
         'schema', n.nspname, 'name', c.relname, 'kind', {KIND}, \
         'comment', pg_catalog.obj_description(c.oid, 'pg_class'), \
         'columns', (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(\
              'name', a.attname, 'type', pg_catalog.format_type(a.atttypid, a.atttypmod), \
              'nullable', NOT a.attnotnull) ORDER BY a.attnum) \
              FROM pg_catalog.pg_attribute a \
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)) \
         ORDER BY n.nspname, c.relname), '[]') AS tables \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMA} \
         AND pg_catalog.has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE')"
    )
}
