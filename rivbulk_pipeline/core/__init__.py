"""The pure core: formats, rules, rate limiting and the load steps.

Nothing here imports Dagster or boto3. Adapters reach the core through the
protocols in `ports`; the Dagster wiring in `rivbulk_pipeline.defs` calls the
step functions with the resources it was given.
"""
