CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    theme text,
    notifications_enabled boolean NOT NULL DEFAULT true
);
INSERT INTO users (id, email, name, updated_at, theme, notifications_enabled)
SELECT i, 'user' || i || '@example.com', 'User ' || i, now() - (1001 - i) * interval '1 hour',
       (ARRAY['light', 'dark', 'solarized', NULL])[1 + i % 4], i % 3 <> 0
FROM generate_series(1, 1000) AS i;
