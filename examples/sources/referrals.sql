-- The referral table every recipe in this folder watches: the registration page adds one
-- row when a player arrives with an MMOLove token (?mmref=..., or the cookie your landing
-- page set). Create it in a database the page can write and the relay can read, e.g. the
-- game's auth database (acore_auth, rAthena's ragnarok, L2J's login database).
-- MariaDB and MySQL.
CREATE TABLE IF NOT EXISTS mmolove_referral (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,       -- the relay's cursor: grows with each row
  referee_identity VARCHAR(64) NOT NULL,         -- the game's account id or login, as text
  token VARCHAR(255) NOT NULL,                   -- the mmref token, as MMOLove gave it
  created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (id),
  UNIQUE KEY uq_mmolove_referral_identity (referee_identity)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The relay's database user reads it, and the game's tables its recipe names, and nothing
-- else (acore_auth/acore_characters here; use your own databases' names):
--   CREATE USER 'mmolove_reader'@'127.0.0.1' IDENTIFIED BY '...';
--   GRANT SELECT ON acore_auth.mmolove_referral TO 'mmolove_reader'@'127.0.0.1';
--   GRANT SELECT ON acore_characters.characters TO 'mmolove_reader'@'127.0.0.1';
