"""Where the pipeline reads and writes, and how hard it may push (no adapter of its own)."""
from __future__ import annotations

from typing import Optional

import dagster as dg


class PipelineSettings(dg.ConfigurableResource):
    image_bucket: str
    inventory_bucket: str
    inventory_prefix: str
    inventory_config_id: str
    output_bucket: str
    output_prefix: str = "rivbulk"
    qualify_concurrency: int = 32
    index_rate_per_second: float = 5.0
    index_concurrency: int = 8
    index_max_attempts: int = 4
    claim_lease_seconds: float = 600.0
    columnar_keys_url_encoded: Optional[bool] = None

    @property
    def report_root(self) -> str:
        """<dest-prefix>/<source-bucket>/<config-id>, as S3 Inventory delivers."""
        return "/".join(p for p in (self.inventory_prefix.strip("/"), self.image_bucket, self.inventory_config_id) if p)
