-- Claims take given kinds (in-process ones, or a remote worker's), so the
-- claim and due indexes lead with the kind.
DROP INDEX tasks_claim_order;
DROP INDEX tasks_due;
CREATE INDEX tasks_claim_by_kind ON tasks (kind, priority DESC, created_at, id) WHERE due_at IS NOT NULL;
CREATE INDEX tasks_due_by_kind ON tasks (kind, due_at) WHERE due_at IS NOT NULL;

-- When a worker last polled for each kind, on any replica (written at most
-- every few seconds per replica and kind).
CREATE TABLE kinds (
    name TEXT PRIMARY KEY,
    last_poll_at BIGINT
);
