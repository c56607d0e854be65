CREATE TABLE users (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text,
    theme text,
    notifications_enabled boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO users (id, email, name, theme, notifications_enabled, updated_at)
SELECT i, 'user' || i || '@example.com', 'User ' || i,
       (ARRAY['light', 'dark', 'solarized', NULL])[1 + i % 4], i % 3 <> 0, now() - (1001 - i) * interval '1 hour'
FROM generate_series(1, 1000) AS i;
