"""The auth manager of the docker-compose deployment: FAB's, with one change for the send approval.

Configured as ``AIRFLOW__CORE__AUTH_MANAGER=campaign_auth_manager.CampaignFabAuthManager``
(``include/`` is on PYTHONPATH). ``make run`` keeps Airflow's SimpleAuthManager.
"""

from __future__ import annotations

from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager
from airflow.providers.fab.auth_manager.models import User


class CampaignFabAuthManager(FabAuthManager):
    """FabAuthManager that also knows a human-in-the-loop respondent by user name."""

    def is_authorized_hitl_task(self, *, assigned_users: set[str], user: User) -> bool:
        """Whether ``user`` may answer a human-in-the-loop task assigned to ``assigned_users``.

        confirm_send's approval is assigned to the operator who triggered the run, and the run
        records only that operator's name (``dag_run.triggering_user_name``); a task cannot read
        FAB's user table (no metadata-database access), so it assigns ``{"id": name, "name": name}``.
        Airflow's check compares ``user.get_id()``, which under FAB is the number of the ``ab_user``
        row, never a name: without this the triggering operator could not answer. So the user
        passes by id (Airflow's own check, for tasks that assign real FAB ids) or by user name
        (FAB user names are unique). The task re-checks the respondent Airflow records after the
        answer.
        """
        if super().is_authorized_hitl_task(assigned_users=assigned_users, user=user):
            return True
        name = user.get_name()
        return bool(name) and name in assigned_users
