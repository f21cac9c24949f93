"""One partition per inventory date, added by the sensor when a complete report arrives.

Dynamic rather than daily time partitions: reports may be daily or weekly, a day may have
none, and a partition should exist only when there is a complete report to load.
"""

import dagster as dg

inventory_dates = dg.DynamicPartitionsDefinition(name="inventory_dates")
