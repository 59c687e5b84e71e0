"""Drift monitoring and the retrain policy: what the agents see now against what the champion was trained on.

    drift.py     the check: reference and current windows from the offline store, Evidently + embeddings
    decision.py  whether that drift should start retraining (signals, thresholds, a cooldown)
    metrics.py   the check as Prometheus metrics (textfile, Pushgateway)
    report.py    the check for people: HTML, JSON, an MLflow run in the `monitoring` experiment

It reads the registry's lineage tags (serving/registry.py) and never promotes anything: promotion
(serving/promote.py, serving/gate.py) and monitoring are independent (.importlinter).
"""
