"""Request records, the power sampler, JSONL files with rotation, stats, the report and Prometheus /metrics."""
