"""The campaign CLI against a real SQLite file: what the operator reads on stdout and stderr."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from campaign.cli import main


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("CAMPAIGN_DB_URL", raising=False)
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def run(db_url: str, capsys: pytest.CaptureFixture[str]):
    """Run the CLI with --db; returns (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--db", db_url, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def test_init_db(run) -> None:
    assert run("init-db") == (0, "campaign database ready\n", "")


def test_demo_seeds_a_ready_delivery(run) -> None:
    code, out, err = run("demo", "--profiles", "40")

    assert (code, err) == (0, "")
    assert out == (
        "demo ready: 40 profiles; delivery 1 is ready with 40 recipients; alice may confirm sends, bob may not\n"
    )

    code, out, _ = run("delivery", "list")
    assert code == 0
    assert out.splitlines() == [
        "   id  status    target  confirmed by   label",
        "    1  ready         40  -              Winter sale 2026",
    ]

    code, out, _ = run("operator", "list")
    assert out.splitlines() == [f"{'alice':20} start_deliveries", f"{'bob':20} (no role)"]

    # Operators and profiles are kept on a second run; a new ready delivery is added.
    code, out, _ = run("demo", "--profiles", "40")
    assert "40 profiles; delivery 2 is ready with 40 recipients" in out


def test_operator_create_grant_revoke_list(run) -> None:
    assert run("operator", "create", "carol", "--name", "Carol C.") == (0, "operator carol (id 1)\n", "")
    assert run("operator", "create", "dave") == (0, "operator dave (id 2)\n", "")
    assert run("operator", "grant", "carol", "approve_deliveries") == (0, "carol now holds approve_deliveries\n", "")
    assert run("operator", "grant", "carol", "start_deliveries")[0] == 0

    code, out, _ = run("operator", "list")
    assert code == 0
    assert out.splitlines() == [f"{'carol':20} approve_deliveries, start_deliveries", f"{'dave':20} (no role)"]

    assert run("operator", "revoke", "carol", "start_deliveries") == (0, "carol no longer holds start_deliveries\n", "")
    _, out, _ = run("operator", "list")
    assert out.splitlines()[0] == f"{'carol':20} approve_deliveries"


def test_operator_grant_to_unknown_operator_is_one_sentence(run) -> None:
    code, out, err = run("operator", "grant", "zed", "start_deliveries")

    assert (code, out) == (2, "")
    assert err == "campaign: There is no operator with login 'zed'; create it first.\n"


def test_operator_grant_of_unknown_role_is_a_usage_error(run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        run("operator", "grant", "carol", "superuser")

    assert excinfo.value.code == 2
    assert "invalid choice: 'superuser'" in capsys.readouterr().err


def test_profiles_import_reports_bad_rows_by_line(run, tmp_path: Path) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text("email,first_name\nann@example.test,Ann\noops,Bad\nben@example.test,Ben\n", encoding="utf-8")

    code, out, err = run("profiles", "import", str(csv))

    assert code == 0
    assert out == "imported 2 profiles, 0 already known, 1 rejected\n"
    assert err == "  line 3: invalid email address 'oops': An email address must have an @-sign.\n"

    code, out, _ = run("profiles", "import", str(csv))
    assert (code, out) == (0, "imported 0 profiles, 2 already known, 1 rejected\n")


def test_profiles_import_strict_exits_1_on_a_rejected_row(run, tmp_path: Path) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text("email\noops\n", encoding="utf-8")

    with pytest.raises(SystemExit) as excinfo:
        run("profiles", "import", "--strict", str(csv))

    assert excinfo.value.code == 1


def test_profiles_import_of_a_file_with_an_unknown_column(run, tmp_path: Path) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text("email,age\nann@example.test,33\n", encoding="utf-8")

    code, out, err = run("profiles", "import", str(csv))

    assert (code, out) == (2, "")
    assert err.startswith(f"campaign: Profile file {csv} has unknown columns age;")
    assert err.count("\n") == 1


def test_delivery_create_prepare_approve_list(run, tmp_path: Path) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text("email,blocklisted\nann@example.test,\nben@example.test,\nbad@example.test,true\n", encoding="utf-8")
    assert run("profiles", "import", str(csv))[0] == 0
    spec = tmp_path / "spring.yaml"
    spec.write_text(
        "label: Spring sale\nsender: news@shop.test\nsubject: Hi\ntext: Hello\nhtml: <p>Hello</p>\n", encoding="utf-8"
    )

    assert run("delivery", "create", str(spec)) == (
        0,
        "delivery 1 created (draft); next: campaign delivery prepare 1\n",
        "",
    )
    _, out, _ = run("delivery", "list")
    assert out.splitlines()[1] == "    1  draft          -  -              Spring sale"

    assert run("delivery", "prepare", "1", "--by", "carol") == (
        0,
        "delivery 1 prepared: 2 recipients in the target (blocklisted and quarantined profiles excluded)\n",
        "",
    )
    assert run("delivery", "approve", "1", "--by", "alice") == (
        0,
        "delivery 1 approved: ready to confirm with the confirm_send DAG\n",
        "",
    )
    _, out, _ = run("delivery", "list")
    assert out.splitlines()[1] == "    1  ready          2  -              Spring sale"

    code, out, err = run("delivery", "approve", "1")
    assert (code, out) == (2, "")
    assert err == "campaign: Delivery 1 is ready; only a draft can be approved.\n"


def test_error_is_one_sentence_without_traceback(run) -> None:
    code, out, err = run("delivery", "approve", "99")

    assert code == 2
    assert out == ""
    assert err == "campaign: Delivery 99 does not exist.\n"
    assert "Traceback" not in err


def test_delivery_create_with_a_missing_spec(run, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    assert run("delivery", "create", str(missing)) == (2, "", f"campaign: Delivery spec {missing} does not exist.\n")


def test_without_a_database_the_cli_says_how_to_name_one(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv("CAMPAIGN_DB_URL", raising=False)

    code = main(["delivery", "list"])

    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == "campaign: No campaign database: pass --db URL or set CAMPAIGN_DB_URL.\n"


def test_database_url_from_the_environment(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CAMPAIGN_DB_URL", f"sqlite:///{tmp_path / 'env.db'}")

    assert main(["operator", "create", "erin"]) == 0

    assert capsys.readouterr().out == "operator erin (id 1)\n"
    assert (tmp_path / "env.db").exists()


def test_an_unusable_database_is_one_sentence_not_a_traceback(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/missing-folder/campaign.db"

    code = main(["--db", url, "operator", "list"])

    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"campaign: cannot use the campaign database ({url}): unable to open database file"
    assert "Traceback" not in err


def test_delivery_pause_resume_stop_as_an_operator_with_the_role(run, db_url: str) -> None:
    from testsupport import start_confirmed_send

    from campaign.db import make_engine

    assert run("demo", "--profiles", "5")[0] == 0
    start_confirmed_send(make_engine(db_url), 1, "alice", "run-1")

    assert run("delivery", "pause", "1", "--by", "alice", "--reason", "relay maintenance") == (
        0,
        "Delivery 1 paused by alice: relay maintenance.\n",
        "",
    )
    assert run("delivery", "list")[1].splitlines()[1].split()[:2] == ["1", "paused"]
    assert run("delivery", "pause", "1", "--by", "alice") == (
        2,
        "",
        "campaign: Delivery 1 is paused (paused by alice: relay maintenance): only a delivery that is sending "
        "can be paused. Nothing was changed.\n",
    )
    assert run("delivery", "resume", "1", "--by", "bob") == (
        2,
        "",
        "campaign: User 'bob' may not resume delivery 1: only operators with the Start deliveries role "
        "can control a send.\n",
    )
    assert run("delivery", "resume", "1", "--by", "alice") == (0, "Delivery 1 resumed by alice.\n", "")
    assert run("delivery", "stop", "1", "--by", "alice") == (0, "Delivery 1 stopped by alice.\n", "")
    assert run("delivery", "list")[1].splitlines()[1].split()[:2] == ["1", "stopping"]


def test_a_delivery_id_beyond_64_bits_is_a_sentence_not_a_traceback(run) -> None:
    """Fresh-user finding: the driver's OverflowError reached the operator as a traceback."""
    assert run("init-db")[0] == 0
    for argv in (
        ("delivery", "pause", "99999999999999999999", "--by", "alice"),
        ("delivery", "prepare", "99999999999999999999"),
        ("delivery", "approve", "99999999999999999999"),
    ):
        assert run(*argv) == (2, "", "campaign: Delivery 99999999999999999999 does not exist.\n"), argv


def test_a_control_without_by_is_a_usage_error(run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run("delivery", "pause", "1")
    assert exited.value.code == 2
    assert "the following arguments are required: --by" in capsys.readouterr().err


def test_grant_tracking_on_sqlite_is_one_sentence(run) -> None:
    code, _, err = run("grant-tracking", "campaign_tracking")
    assert code == 2
    assert err == "campaign: Only PostgreSQL has roles: on SQLite the tracking service uses the database file.\n"


@pytest.mark.postgres
def test_grant_tracking_gives_an_existing_role_its_privileges(postgres_db, capsys) -> None:
    role = f"tracker_{uuid.uuid4().hex[:12]}"
    with postgres_db.engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}"'))

    assert main(["--db", postgres_db.url, "grant-tracking", role]) == 0
    assert (
        capsys.readouterr().out
        == f"role {role} may now serve tracking, and do nothing else (README: the tracking service)\n"
    )
    assert main(["--db", postgres_db.url, "grant-tracking", 'x"; DROP TABLE profiles; --']) == 2
    assert "is not a role name" in capsys.readouterr().err
    with postgres_db.engine.begin() as conn:
        granted = conn.execute(
            text(
                "SELECT has_table_privilege(:r, 'tracking_logs', 'INSERT'), "
                "has_table_privilege(:r, 'deliveries', 'SELECT')"
            ),
            {"r": role},
        ).one()
    assert tuple(granted) == (True, False)
