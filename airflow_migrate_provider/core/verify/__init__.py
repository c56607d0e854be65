"""Verification: source-vs-target checks (counts, schemas, indexes, constraints, samples, checksums),
expectations (Great Expectations), performance comparisons and health gates. Airflow-free."""
