"""Inventory formats and locations: reading and writing S3 Inventory reports, the keys in
them, finding reports in a bucket, and the S3 Batch Operations manifest."""
