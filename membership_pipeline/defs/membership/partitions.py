"""One partition per Flagsmith environment (its api key), added and removed by the discovery
sensor as environments come and go."""

import dagster as dg

ENVIRONMENTS_PARTITIONS_NAME = "environments"
environments_partitions = dg.DynamicPartitionsDefinition(name=ENVIRONMENTS_PARTITIONS_NAME)
