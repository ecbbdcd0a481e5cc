"""`analyze`: the sensitivity table (entries, metrics, evaluation, executors, the resumable cache)."""
