"""The web apps served on Airflow's API server by the plugin: public tracking endpoints and the
authenticated Deployment view, with its HTML templates.

They depend on FastAPI; the domain modules of ``campaign`` do not depend on them.
"""
