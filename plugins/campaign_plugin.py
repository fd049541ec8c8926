"""The campaign-send Airflow plugin: public tracking endpoints under /campaign on the API server."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from campaign.airflow_glue import api_server_campaign_engine
from campaign.tokens import tracking_secret
from campaign.tracking_app import create_app


class CampaignPlugin(AirflowPlugin):
    name = "campaign"
    fastapi_apps = [
        {
            "app": create_app(api_server_campaign_engine, tracking_secret),
            "url_prefix": "/campaign",
            "name": "Campaign tracking (open, click, unsubscribe)",
        }
    ]
