-- The PostgreSQL twin of sql/sqlite/007_projects.sql (the why of each part is there).

-- The watch is (project, kind, token); rows from before are the project 'default'.
ALTER TABLE watches ADD COLUMN project text NOT NULL DEFAULT 'default';
ALTER TABLE watches DROP CONSTRAINT watches_kind_token_key;
ALTER TABLE watches ADD CONSTRAINT watches_project_kind_token_key UNIQUE (project, kind, token);

ALTER TABLE jobs ADD COLUMN project text NOT NULL DEFAULT 'default';
DROP INDEX jobs_registration;
CREATE UNIQUE INDEX jobs_registration ON jobs (tenant, project, kind, token, url_digest)
    WHERE state <> 'canceled';

ALTER TABLE pauses ADD COLUMN project text NOT NULL DEFAULT 'default';
UPDATE pauses SET key = 'default:' || key;

-- Paused time per (project, kind): writers lock the rows of the project they pause.
ALTER TABLE pause_clock ADD COLUMN project text NOT NULL DEFAULT 'default';
ALTER TABLE pause_clock DROP CONSTRAINT pause_clock_pkey;
ALTER TABLE pause_clock ADD PRIMARY KEY (project, kind);
