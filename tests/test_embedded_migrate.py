"""`ncsweep up` on a database it cannot migrate says why in one line (before: "unexpected error ... a bug")."""
from __future__ import annotations

from service.embedded import main
from tests.helpers_stack import stamp_revision


def _home_at(tmp_path, revision: str):  # noqa: ANN001, ANN202
    from nc_core.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'ncsweep.db'}"
    upgrade(url)
    stamp_revision(url, revision)
    return tmp_path


def test_a_database_of_a_newer_ncsweep_is_named_as_such(tmp_path, capsys):  # noqa: ANN001
    home = _home_at(tmp_path, "ffff")
    assert main(home, example=False) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"error: the database {home / 'ncsweep.db'} is at schema revision ffff, which this ncsweep does not know " \
           "(its newest is 0007): it was migrated by a newer ncsweep" in out and "bug" not in out


def test_a_migration_that_refuses_its_rows_says_what_to_do(tmp_path, capsys, monkeypatch):  # noqa: ANN001
    import nc_core.db.migrate as migrate

    def refuses(url: str) -> None:
        raise RuntimeError("migration 0005: expected one primary run per (sweep, kind, spec_hash), found 1 group(s)")

    monkeypatch.setattr(migrate, "upgrade", refuses)
    assert main(tmp_path, example=False) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "error: migrating" in out and "stopped: migration 0005: expected one primary run" in out and "bug" not in out
