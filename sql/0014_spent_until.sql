-- A key whose account said it is out of quota or balance (a 429 or 402 saying so) serves no call
-- until the balancer's day ends: the key index and the health checks leave it out until then.
-- Its status is cooling, disabled_by stays NULL, status_reason says why.
ALTER TABLE shared_keys ADD COLUMN spent_until timestamptz;
