-- contract: drops what releases of schema 1 needed. Run it only once no host can run them
-- (`rollout contract` checks that); releases of schema 3 need it.
-- Applied with: psql -X -v ON_ERROR_STOP=1 --single-transaction -f 003_contract.sql
SET LOCAL lock_timeout = '5s';

-- Refuses (and, in one transaction, changes nothing) while the backfill is not complete:
-- SET NOT NULL scans the table and fails on the first row without a full_name.
ALTER TABLE users ALTER COLUMN full_name SET NOT NULL;

DROP TRIGGER IF EXISTS users_full_name_in_step ON users;
DROP FUNCTION IF EXISTS users_full_name_in_step();
ALTER TABLE users DROP COLUMN IF EXISTS name;
