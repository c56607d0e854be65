CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    email VARCHAR(255) NOT NULL UNIQUE,
    name TEXT,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    theme TEXT,
    notifications_enabled BOOLEAN NOT NULL DEFAULT TRUE
);
INSERT INTO users (id, email, name, updated_at, theme, notifications_enabled)
WITH RECURSIVE seq (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < 1000)
SELECT i, CONCAT('user', i, '@example.com'), CONCAT('User ', i),
       CURRENT_TIMESTAMP(6) - INTERVAL (1001 - i) HOUR,
       ELT(1 + i % 4, 'light', 'dark', 'solarized', NULL), i % 3 <> 0
FROM seq;
