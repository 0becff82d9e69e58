-- Accounts at sign-in providers other than Linux.do (OpenID Connect, GitHub), keyed by
-- (provider, subject): two providers never share an account because a user name matches.
-- Linux.do keeps users.linux_do_id.

CREATE TABLE user_identities (
    provider    text NOT NULL,
    subject     text NOT NULL,
    user_id     uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject)
);

CREATE INDEX user_identities_user ON user_identities (user_id);
