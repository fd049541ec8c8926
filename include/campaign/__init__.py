"""campaign-send: the confirm-send stage of a marketing delivery system.

Plain Python; only ``airflow_glue`` imports Airflow.
"""
