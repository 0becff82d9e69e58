-- User names are unique after folding, not only byte for byte: `ADMIN`, `ａｄｍｉｎ` (full width),
-- `admın` (dotless i) and `ádmin` all read as `admin` to a person, so a new account whose name
-- folds like a taken one gets a suffixed name instead (gateway/store/users.py).
--
-- username_key() is the one definition of the fold, used by the index and by every look-up:
-- NFKC, lower case, what Unicode case folding adds to lower() (ẞ/ß -> ss, final ς -> σ), dotless
-- ı -> i, then NFKD with the combining diacritical marks U+0300-U+036F (the accents of Latin,
-- Greek and Cyrillic letters) dropped, lower case again, NFKC. Marks of other scripts are kept:
-- they tell names apart there. lower() follows the database's collation: under "C" it folds only
-- ASCII, which the second lower() after dropping accents extends to every accented Latin letter.
--
-- Names already alike: the oldest keeps its name, later ones become `<name>~<first 8 of the id>`
-- (as a Linux.do name yielded to its new owner does).

CREATE FUNCTION username_key(name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
SELECT normalize(
    lower(regexp_replace(
        normalize(replace(translate(lower(normalize(name, NFKC)), 'ıςẞ', 'iσß'), 'ß', 'ss'), NFKD),
        '[\u0300-\u036f]', '', 'g'
    )),
    NFKC
)
$$;

WITH alike AS (
    SELECT id, row_number() OVER (PARTITION BY username_key(username) ORDER BY created_at, id) AS n
    FROM users
)
UPDATE users u SET username = u.username || '~' || left(u.id::text, 8), updated_at = now()
FROM alike
WHERE alike.id = u.id AND alike.n > 1;

CREATE UNIQUE INDEX users_username_folded ON users (username_key(username));
