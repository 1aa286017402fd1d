-- What operators did with dead letters (`kassa dlq redrive|discard`): which one (its id is
-- `<group>/<partition>/<offset>` of the dead-letter record), who, why, when, and what came of it.
-- At most one redrive of a dead letter is ever published: a second is refused.
CREATE SCHEMA IF NOT EXISTS ops;

CREATE TABLE ops.dead_letter_actions (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dead_letter text        NOT NULL,
    action      text        NOT NULL CHECK (action IN ('redrive', 'discard')),
    actor       text        NOT NULL,
    reason      text        NOT NULL,
    outcome     text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON ops.dead_letter_actions (dead_letter, id);
CREATE UNIQUE INDEX dead_letter_redriven_once ON ops.dead_letter_actions (dead_letter)
    WHERE action = 'redrive' AND outcome = 'published';
