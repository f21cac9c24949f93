"""Dagster pools: limits that hold across every run of the deployment, not per run.

Every gateway call goes through the `indexed_users` step, and that step is in the `riv_gateway`
pool. With the pool's limit at 1, whatever launches runs (the sensor, a backfill of 30 dates,
two operators), one indexing step runs at a time, so the gateway sees at most
`RIVBULK_INDEX_RATE` calls per second; the other steps of those runs go on in parallel.
"""

GATEWAY_POOL = "riv_gateway"
GATEWAY_POOL_LIMIT = 1
