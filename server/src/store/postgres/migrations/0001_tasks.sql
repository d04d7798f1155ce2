-- Tasks: the whole record as JSON (`record`), plus the columns its indexes need.
-- Times are microseconds since the Unix epoch.
CREATE TABLE tasks (
    id BYTEA PRIMARY KEY,
    kind TEXT NOT NULL,
    state SMALLINT NOT NULL,
    priority INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    -- set while claimable (QUEUED, RETRY_WAIT): when it may be claimed
    due_at BIGINT,
    -- set while claimable and bounded
    deadline BIGINT,
    -- set while RUNNING
    lease_expires_at BIGINT,
    lease_token BIGINT,
    -- set once terminal: when retention ends
    expires_at BIGINT,
    revision BIGINT NOT NULL,
    idempotency_key TEXT UNIQUE,
    record BYTEA NOT NULL
);
CREATE INDEX tasks_claim_order ON tasks (priority DESC, created_at, id) WHERE due_at IS NOT NULL;
CREATE INDEX tasks_due ON tasks (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX tasks_deadline ON tasks (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX tasks_lease ON tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX tasks_expiry ON tasks (expires_at, id) WHERE expires_at IS NOT NULL;
CREATE INDEX tasks_newest ON tasks (created_at DESC, id DESC);

-- Fencing tokens of leases, increasing with every claim by any replica.
CREATE SEQUENCE task_fencing_tokens;

-- Every committed change, written in the transaction that made it, so that
-- other replicas can read the exact record of each revision (NULL revision:
-- the task was deleted) and replay what they missed. Pruned after minutes.
CREATE TABLE task_changes (
    seq BIGSERIAL PRIMARY KEY,
    task_id BYTEA NOT NULL,
    revision BIGINT,
    record BYTEA,
    -- the replica that made the change
    origin TEXT NOT NULL,
    -- the database's clock, so that replicas with skewed clocks agree
    changed_at BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT
);
CREATE INDEX task_changes_by_task ON task_changes (task_id, revision);
CREATE INDEX task_changes_by_time ON task_changes (changed_at);
