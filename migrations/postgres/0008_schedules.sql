-- Cron schedules, one record per fire time, and the scheduler's leader lease.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    input TEXT NOT NULL,
    overlap TEXT NOT NULL,
    catch_up TEXT NOT NULL,
    catch_up_window_ms BIGINT NOT NULL,
    paused BIGINT NOT NULL,
    -- 'api', or 'workflow' for a workflow's triggers
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- the first fire time not handled yet
    next_fire_at BIGINT,
    last_run_id TEXT,
    queued_fire_at BIGINT
);
CREATE INDEX schedules_due ON schedules (next_fire_at);
CREATE INDEX schedules_workflow ON schedules (workflow);

-- The primary key is what makes a fire happen once, however many
-- schedulers see it: the one whose insert lands handles it.
CREATE TABLE schedule_fires (
    schedule_id TEXT NOT NULL,
    fire_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    run_id TEXT,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (schedule_id, fire_at)
);
CREATE INDEX schedule_fires_unstarted ON schedule_fires (schedule_id) WHERE run_id IS NULL AND outcome = 'fired';

CREATE TABLE scheduler_leader (
    id BIGINT PRIMARY KEY,
    owner TEXT,
    lease_until BIGINT NOT NULL
);
INSERT INTO scheduler_leader (id, owner, lease_until) VALUES (1, NULL, 0);
