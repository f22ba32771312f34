-- Tidewire outbox, schema version 1.
--
-- Installed by `tidewire serve --outbox postgres://…` (once, under an advisory lock) or by
-- hand: `tidewire outbox sql | psql "$APP_DATABASE"`. Safe to run again: every statement is
-- idempotent. See docs/outbox.md.
--
-- The app calls, inside its own transaction:
--   tidewire.publish(room, type, data, key)      an app event
--   tidewire.put_item(room, id, value, key)      item.put
--   tidewire.delete_item(room, id, key)          item.deleted
--   tidewire.watch_table(table, room_expr, id_column, backfill)   mirror a table
-- Each validates its arguments the way the server does and raises inside the caller's
-- transaction; each takes a per-room transaction lock, so writers of one room queue until
-- commit and the room's outbox ids are in commit order.

CREATE SCHEMA IF NOT EXISTS tidewire;

CREATE TABLE IF NOT EXISTS tidewire.schema_version (
    version integer PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- The server's limits, as the functions check them. The server rewrites this row on start
-- with its own --max-item-bytes and --max-body-bytes.
CREATE TABLE IF NOT EXISTS tidewire.settings (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    max_item_bytes integer NOT NULL,
    max_data_bytes integer NOT NULL,
    -- Part of the idempotency key of rows that carry none (`outbox:<install_id>:<id>`), so a
    -- reinstalled outbox whose ids start again at 1 never collides with old keys.
    install_id text NOT NULL
);
INSERT INTO tidewire.settings (max_item_bytes, max_data_bytes, install_id)
VALUES (262144, 1048576, substr(md5(random()::text || clock_timestamp()::text), 1, 16))
ON CONFLICT (singleton) DO NOTHING;

CREATE TABLE IF NOT EXISTS tidewire.outbox (
    id bigserial PRIMARY KEY,
    partition integer NOT NULL,
    room text NOT NULL,
    op text NOT NULL CHECK (op IN ('publish', 'put', 'delete')),
    event_type text,
    item_id text,
    data jsonb,
    key text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS outbox_partition_id ON tidewire.outbox (partition, id);

CREATE TABLE IF NOT EXISTS tidewire.dead_letters (
    id bigint PRIMARY KEY,
    partition integer NOT NULL,
    room text NOT NULL,
    op text NOT NULL,
    event_type text,
    item_id text,
    data jsonb,
    key text,
    created_at timestamptz NOT NULL,
    reason text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Tidewire nodes consuming this outbox (a heartbeat each poll), to share the partitions.
CREATE TABLE IF NOT EXISTS tidewire.consumers (
    node text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

-- 32 bits of the room's MD5: the per-room lock key, and (its low 4 bits) the partition.
-- MD5 rather than hashtext(): stable across PostgreSQL versions.
CREATE OR REPLACE FUNCTION tidewire.room_hash(room text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ('x' || substr(md5(room), 1, 8))::bit(32)::integer $$;

-- The partition of a room: 16 partitions (Rust: outbox::PARTITIONS).
CREATE OR REPLACE FUNCTION tidewire.partition_of(room text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT tidewire.room_hash(room) & 15 $$;

CREATE OR REPLACE FUNCTION tidewire.check_name(fn text, what text, value text, max_len integer)
RETURNS void LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'tidewire.%: % must not be null', fn, what
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF octet_length(value) < 1 OR octet_length(value) > max_len
       OR value !~ '^[A-Za-z0-9_.:-]+$' THEN
        RAISE EXCEPTION 'tidewire.%: bad % "%"', fn, what, left(value, 64)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('1 to %s characters of A-Z a-z 0-9 _ . : -', max_len);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tidewire.check_key(fn text, key text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF key IS NOT NULL AND (octet_length(key) > 128 OR key !~ '^[!-~]+$') THEN
        RAISE EXCEPTION 'tidewire.%: bad key "%"', fn, left(key, 64)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = '1 to 128 visible ASCII characters, or null';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tidewire.check_json(fn text, what text, value jsonb, max_bytes integer)
RETURNS void LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION 'tidewire.%: % must not be null', fn, what
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'for a JSON null pass ''null''::jsonb';
    END IF;
    -- PostgreSQL prints jsonb with a space after each `:` and `,`: never shorter than the
    -- compact JSON the server measures, so what passes here passes there.
    IF octet_length(value::text) > max_bytes THEN
        RAISE EXCEPTION 'tidewire.%: % too large: % bytes, limit %', fn, what,
            octet_length(value::text), max_bytes
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
END
$$;

-- Appends one row; the caller has validated it. The room's transaction lock is taken before
-- the id is drawn, so a room's ids are in the commit order of their transactions.
CREATE OR REPLACE FUNCTION tidewire.append(room text, op text, event_type text, item_id text,
                                           data jsonb, key text)
RETURNS bigint LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part integer := tidewire.partition_of(room);
    row_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1953980018, tidewire.room_hash(room));
    INSERT INTO tidewire.outbox (partition, room, op, event_type, item_id, data, key)
    VALUES (part, room, op, event_type, item_id, data, key)
    RETURNING id INTO row_id;
    PERFORM pg_notify('tidewire_outbox', part::text);
    RETURN row_id;
END
$$;

CREATE OR REPLACE FUNCTION tidewire.publish(room text, type text, data jsonb, key text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    limits tidewire.settings;
BEGIN
    SELECT * INTO limits FROM tidewire.settings;
    PERFORM tidewire.check_name('publish', 'room', room, 128);
    PERFORM tidewire.check_name('publish', 'type', type, 64);
    IF type IN ('broadcast', 'resync', 'reconnect', 'error', 'ack', 'pong')
       OR type LIKE 'item.%' OR type LIKE 'presence.%' OR type LIKE 'tidewire.%' THEN
        RAISE EXCEPTION 'tidewire.publish: type "%" is reserved', type
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'built-in types and the item., presence. and tidewire. families are reserved';
    END IF;
    PERFORM tidewire.check_json('publish', 'data', data, limits.max_data_bytes);
    PERFORM tidewire.check_key('publish', key);
    RETURN tidewire.append(room, 'publish', type, NULL, data, key);
END
$$;

CREATE OR REPLACE FUNCTION tidewire.put_item(room text, id text, value jsonb, key text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    limits tidewire.settings;
BEGIN
    SELECT * INTO limits FROM tidewire.settings;
    PERFORM tidewire.check_name('put_item', 'room', room, 128);
    PERFORM tidewire.check_name('put_item', 'id', id, 128);
    PERFORM tidewire.check_json('put_item', 'value', value, limits.max_item_bytes);
    PERFORM tidewire.check_key('put_item', key);
    RETURN tidewire.append(room, 'put', NULL, id, value, key);
END
$$;

CREATE OR REPLACE FUNCTION tidewire.delete_item(room text, id text, key text DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tidewire.check_name('delete_item', 'room', room, 128);
    PERFORM tidewire.check_name('delete_item', 'id', id, 128);
    PERFORM tidewire.check_key('delete_item', key);
    RETURN tidewire.append(room, 'delete', NULL, id, NULL, key);
END
$$;

-- Mirrors `table` into rooms: after every insert, update and delete of a row, put_item or
-- delete_item in the room that `room` (an SQL expression over the row, named NEW, e.g.
-- $$'board-' || NEW.board_id$$) gives, with the item id from `id_column` and the row as
-- the value (to_jsonb). A NULL room leaves the row out. An update that moves a row to another
-- room or id deletes it there first; an update that changes nothing sends nothing. With
-- `backfill`, the rows already in the table are put now. Run it again to change the room
-- expression; unwatch_table(table) removes the trigger. The expression runs with the
-- caller's search_path, at watch time (checked on a NULL row, and for the backfill) as in
-- the trigger.
CREATE OR REPLACE FUNCTION tidewire.watch_table("table" regclass, room text, id_column text,
                                                backfill boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql
AS $$
DECLARE
    room_fn text;
    trigger_fn text;
    rec record;
BEGIN
    IF "table" IS NULL OR room IS NULL OR id_column IS NULL OR backfill IS NULL THEN
        RAISE EXCEPTION 'tidewire.watch_table: arguments must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = "table" AND attname = id_column AND attnum > 0
                     AND NOT attisdropped) THEN
        RAISE EXCEPTION 'tidewire.watch_table: % has no column "%"', "table", id_column
            USING ERRCODE = 'undefined_column';
    END IF;
    room_fn := 'watch_' || "table"::oid || '_room';
    trigger_fn := 'watch_' || "table"::oid || '_trigger';
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION tidewire.%I(new %s) RETURNS text LANGUAGE plpgsql STABLE '
        'AS %L', room_fn, "table", 'BEGIN RETURN (' || room || E')::text;\nEND');
    -- A wrong expression (a missing column) fails now, not at the first write.
    EXECUTE format('SELECT tidewire.%I(NULL::%s)', room_fn, "table");
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION tidewire.%1$I() RETURNS trigger LANGUAGE plpgsql AS $body$
        DECLARE
            old_room text; new_room text; old_id text; new_id text; v jsonb;
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                old_room := tidewire.%2$I(OLD);
                old_id := to_jsonb(OLD) ->> %3$L;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                new_room := tidewire.%2$I(NEW);
                v := to_jsonb(NEW);
                new_id := v ->> %3$L;
            END IF;
            IF TG_OP = 'UPDATE' AND old_room IS NOT DISTINCT FROM new_room
               AND old_id IS NOT DISTINCT FROM new_id THEN
                IF v = to_jsonb(OLD) THEN
                    RETURN NULL;
                END IF;
            ELSIF old_room IS NOT NULL THEN
                PERFORM tidewire.delete_item(old_room, old_id);
            END IF;
            IF new_room IS NOT NULL THEN
                PERFORM tidewire.put_item(new_room, new_id, v);
            END IF;
            RETURN NULL;
        END
        $body$ $f$, trigger_fn, room_fn, id_column);
    EXECUTE format('DROP TRIGGER IF EXISTS tidewire_watch ON %s', "table");
    EXECUTE format('CREATE TRIGGER tidewire_watch AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION tidewire.%I()', "table", trigger_fn);
    IF backfill THEN
        FOR rec IN EXECUTE format('SELECT tidewire.%I(t) AS r, to_jsonb(t) AS v FROM %s t',
                                  room_fn, "table") LOOP
            IF rec.r IS NOT NULL THEN
                PERFORM tidewire.put_item(rec.r, rec.v ->> id_column, rec.v);
            END IF;
        END LOOP;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tidewire.unwatch_table("table" regclass) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF "table" IS NULL THEN
        RAISE EXCEPTION 'tidewire.unwatch_table: table must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS tidewire_watch ON %s', "table");
    EXECUTE format('DROP FUNCTION IF EXISTS tidewire.%I()', 'watch_' || "table"::oid || '_trigger');
    EXECUTE format('DROP FUNCTION IF EXISTS tidewire.%I(%s)', 'watch_' || "table"::oid || '_room', "table");
END
$$;

-- Only the functions above write the outbox: callers need EXECUTE on them and USAGE on the
-- schema, not rights on the tables.
REVOKE ALL ON FUNCTION tidewire.append(text, text, text, text, jsonb, text) FROM PUBLIC;

INSERT INTO tidewire.schema_version (version) VALUES (1) ON CONFLICT (version) DO NOTHING;
