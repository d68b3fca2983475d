-- expand: additive only, safe for releases of schema 1 (they never name full_name).
-- Applied with: psql -X -v ON_ERROR_STOP=1 --single-transaction -f 001_expand.sql
-- Re-running it changes nothing (IF NOT EXISTS, OR REPLACE).
--
-- Wait at most 5 s for the table lock: ADD COLUMN queues an ACCESS EXCLUSIVE lock behind any
-- long transaction, and every writer would queue behind it. Failing fast stops the deploy
-- before its first drain instead of stalling the fleet.
SET LOCAL lock_timeout = '5s';

ALTER TABLE users ADD COLUMN IF NOT EXISTS full_name text;

-- Releases of schema 1 keep writing only `name` while the rolling deploy replaces them (and
-- again after a rollback). This trigger keeps `full_name` in step for every row they insert or
-- rename, from the moment expand commits: the backfill then only has rows older than that,
-- and none written by an old host at any time can be missed by it.
CREATE OR REPLACE FUNCTION users_full_name_in_step() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.full_name IS NULL THEN
            NEW.full_name := NEW.name;
        END IF;
    ELSIF NEW.name IS DISTINCT FROM OLD.name
          AND NEW.full_name IS NOT DISTINCT FROM OLD.full_name THEN
        NEW.full_name := NEW.name;  -- a writer that knows only `name` renamed the user
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS users_full_name_in_step ON users;
CREATE TRIGGER users_full_name_in_step
    BEFORE INSERT OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_full_name_in_step();
