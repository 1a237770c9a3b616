-- 0005: single sign-on to the portal through a tenant's OpenID Connect provider.

-- The provider's subject for an account, remembered at its first sign-in. Only issuer + subject
-- identify a person stably (OpenID Connect Core 1.0 §5.7); an e-mail address can be handed to
-- someone else, who must not inherit the account. A later sign-in whose e-mail matches but whose
-- subject does not is refused.
ALTER TABLE staff_users ADD COLUMN oidc_issuer text, ADD COLUMN oidc_subject text;
-- One account per person at a provider.
CREATE UNIQUE INDEX staff_users_oidc_subject ON staff_users (oidc_issuer, oidc_subject)
    WHERE oidc_subject IS NOT NULL;

-- Sign-ins under way, between the redirect to the provider and its redirect back. Each row is
-- used once (deleted when read) and lives ten minutes. Only hashes of the state and of the
-- browser-binding cookie are kept; the nonce and PKCE verifier are worthless without the code.
CREATE TABLE sso_states (
    state_hash     bytea       PRIMARY KEY,
    tenant         text        NOT NULL,
    browser_hash   bytea       NOT NULL,
    nonce          text        NOT NULL,
    code_verifier  text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);
-- Expired rows are cleared whenever a sign-in starts.
CREATE INDEX sso_states_expires ON sso_states (expires_at);
