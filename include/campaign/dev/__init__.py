"""What serves development only, never production: throw-away servers (SMTP, PostgreSQL, a
standalone Airflow with its REST client) for ``make run``, the tests and the benchmarks, demo
data, and the play-recipients who open and click the demo mails.

No module of the product imports it at import time; the CLI's ``demo`` and ``play-recipients``
commands import it when they run.
"""
