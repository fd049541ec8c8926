"""What serves development only, never production: throw-away servers (SMTP, PostgreSQL, a
standalone Airflow with its REST client) for ``make run``, the tests and the benchmarks, demo
data and the play-recipients who open and click the demo mails.

Nothing outside ``campaign.dev`` imports it at module level, except the CLI's demo commands
when they run.
"""
