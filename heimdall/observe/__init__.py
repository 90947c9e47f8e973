"""
Metrics, alerts, the access log and log configuration.
"""
