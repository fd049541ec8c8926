"""The campaign-send Airflow plugin, on the API server:

- ``/campaign``: public tracking endpoints (open pixel, click redirect, unsubscribe);
- ``/campaign-deployment``: the Deployment view and its JSON API, for authenticated users only,
  with an entry in the Airflow navigation and a "Delivery page" link on confirm_send tasks.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from airflow.api_fastapi.core_api.security import get_user
from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from campaign.airflow_glue import api_server_campaign_engine
from campaign.tokens import tracking_secret
from campaign.web import deployment_app, tracking_app


class DeliveryPageLink(BaseOperatorLink):
    """From any task of a confirm_send run to the Deployment page of the delivery it sends."""

    name = "Delivery page"

    def get_link(self, operator, *, ti_key) -> str:
        if ti_key.dag_id != "confirm_send":
            return ""
        base_path = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
        return f"{base_path}{deployment_app.URL_PREFIX}/runs/{quote(ti_key.run_id, safe='')}"


class CampaignPlugin(AirflowPlugin):
    name = "campaign"
    fastapi_apps = [
        {
            "app": tracking_app.create_app(api_server_campaign_engine, tracking_secret),
            "url_prefix": "/campaign",
            "name": "Campaign tracking (open, click, unsubscribe)",
        },
        {
            "app": deployment_app.create_app(api_server_campaign_engine, get_user),
            "url_prefix": deployment_app.URL_PREFIX,
            "name": "Campaign Deployment view",
        },
    ]
    external_views = [
        {
            "name": "Deployment",
            "href": deployment_app.URL_PREFIX.lstrip("/") + "/",
            "destination": "nav",
            "url_route": "campaign-deployment",
            "category": "browse",
        }
    ]
    global_operator_extra_links = [DeliveryPageLink()]
