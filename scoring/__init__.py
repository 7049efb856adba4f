"""Batch scoring: a registered version's predictions for a CSV or Parquet file of any size (local or on Spark)."""
