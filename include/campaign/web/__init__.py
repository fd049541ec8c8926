"""The web apps served on Airflow's API server by the plugin: public tracking endpoints and the
authenticated Deployment view, with its HTML templates; and the tracking endpoints served on
their own, without Airflow (``tracking_service``).

They depend on FastAPI; the domain modules of ``campaign`` do not depend on them.
"""
