-- Count and checksum of table users, whatever phase its schema is in (to_jsonb sees only the
-- columns that exist): rows | distinct ids | md5 over ordered id:coalesce(full_name, name) |
-- rows without full_name yet | rows whose name and full_name differ | columns
SELECT count(*),
       count(DISTINCT id),
       md5(coalesce(string_agg(id::text || ':' || coalesce(j->>'full_name', j->>'name', ''),
                               E'\n' ORDER BY id), '')),
       count(*) FILTER (WHERE j ? 'full_name' AND j->>'full_name' IS NULL),
       count(*) FILTER (WHERE j ? 'name' AND j->>'full_name' IS NOT NULL
                          AND j->>'name' IS DISTINCT FROM j->>'full_name'),
       (SELECT string_agg(column_name, ',' ORDER BY ordinal_position)
          FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = 'users')
  FROM (SELECT u.id, to_jsonb(u) AS j FROM users u) AS t;
