"""Drift monitoring and the retrain policy: what the agents see now against what the champion was trained on.

    config.py    what a check is asked (MonitorConfig, the columns) and answers (DriftReport)
    windows.py   the current window and the reference (the champion's lineage, else a fixed window)
    embeddings.py  the topic signal: sentence embeddings and a classifier AUC against a null threshold
    drift.py     the check: both windows through Evidently and the embeddings, overall and per agent
    decision.py  whether that drift should start retraining (signals, thresholds, a cooldown)
    metrics.py   the check as Prometheus metrics (textfile, Pushgateway)
    report.py    the check for people: HTML, JSON, an MLflow run in the `monitoring` experiment

It reads the registry's lineage tags (serving/registry.py) and never promotes anything: promotion
(serving/promote.py, serving/gate.py) and monitoring are independent (.importlinter).
"""
