CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text,
    theme text,
    notifications_enabled boolean NOT NULL DEFAULT true
);
INSERT INTO users (id, email, name, theme, notifications_enabled)
SELECT i, 'user' || i || '@example.com', 'User ' || i,
       (ARRAY['light', 'dark', 'solarized', NULL])[1 + i % 4], i % 3 <> 0
FROM generate_series(1, 1000) AS i;
