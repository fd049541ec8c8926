# The image of every Airflow service of docker-compose.yaml: Airflow's own image plus the
# project's pinned Python dependencies. DAGs, plugins and include/ are mounted, not copied.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt constraints.txt /opt/campaign/
RUN pip install --no-cache-dir -r /opt/campaign/requirements.txt -c /opt/campaign/constraints.txt
ENV PYTHONPATH=/opt/airflow/include
