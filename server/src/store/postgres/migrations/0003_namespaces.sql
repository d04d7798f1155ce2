-- Every task lives in a namespace; those written before are in 'default'.
-- An idempotency key is unique within its namespace. A worker's claims and
-- a namespace's listings read their own part of an index.
ALTER TABLE tasks ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
ALTER TABLE tasks DROP CONSTRAINT tasks_idempotency_key_key;
CREATE UNIQUE INDEX tasks_idempotency_by_namespace ON tasks (namespace, idempotency_key);
CREATE INDEX tasks_claim_by_namespace ON tasks (namespace, kind, priority DESC, created_at, id) WHERE due_at IS NOT NULL;
CREATE INDEX tasks_newest_by_namespace ON tasks (namespace, created_at DESC, id DESC);
-- Quotas count a namespace's running attempts.
CREATE INDEX tasks_running_by_namespace ON tasks (namespace) WHERE lease_token IS NOT NULL;
