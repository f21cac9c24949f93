"""The fixed clock of the tests: the demo data and the test reports are created at NOW."""

from datetime import datetime, timezone

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=timezone.utc)
