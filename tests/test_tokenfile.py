"""The Kiro login file: parsing (with the IdC client file), atomic write-back, change detection."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from ki2api.kiro.accounts.credentials import SOCIAL_PROFILE_ARN, CredentialError
from ki2api.kiro.accounts.tokenfile import (
    TokenFileError,
    load_login_file,
    stamp_of,
    update_login_file,
    write_json_atomic,
)
from ki2api.settings import Settings

SOCIAL_LOGIN = {
    "accessToken": "access-token-from-file-0001",
    "refreshToken": "refresh-token-from-file-0001",
    "expiresAt": "2030-01-01T00:00:00.000Z",
    "authMethod": "social",
    "provider": "Github",
    "profileArn": "arn:aws:codewhisperer:us-east-1:123456789012:profile/OWN",
    "someFutureField": {"kept": True},
}


def write(path: Path, data: object, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))
    path.chmod(mode)
    return path


def test_social_login_file(tmp_path):
    path = write(tmp_path / "kiro-auth-token.json", SOCIAL_LOGIN)
    login = load_login_file(path, label="kiro-login", source=f"file:{path}", settings=Settings())
    spec = login.spec
    assert spec.auth_method == "social"
    assert spec.access_token == "access-token-from-file-0001"
    assert (spec.profile_arn or "").endswith("/OWN")  # the file's own value wins
    assert spec.expires_at is not None and spec.expires_at.year == 2030
    assert spec.token_file == path
    assert "access-token-from-file-0001" not in repr(spec)


def test_idc_login_reads_the_client_file_beside_it(tmp_path):
    path = write(
        tmp_path / "kiro-auth-token.json",
        {
            "accessToken": "access-token-idc-0001",
            "refreshToken": "refresh-token-idc-0001",
            "expiresAt": "2030-01-01T00:00:00Z",
            "authMethod": "IdC",
            "provider": "BuilderId",
            "region": "eu-central-1",
            "clientIdHash": "abc123hash",
        },
    )
    write(
        tmp_path / "abc123hash.json",
        {"clientId": "cid", "clientSecret": "csecret-long-value", "expiresAt": "2030-01-01T00:00Z"},
    )
    spec = load_login_file(path, label="x", source="f", settings=Settings()).spec
    assert spec.auth_method == "idc"
    assert (spec.client_id, spec.client_secret) == ("cid", "csecret-long-value")
    assert spec.region == "eu-central-1"
    assert spec.client_file == tmp_path / "abc123hash.json"
    assert spec.can_refresh
    assert spec.profile_arn == SOCIAL_PROFILE_ARN  # none in the file, none configured


def test_profile_arn_falls_back_to_the_setting(tmp_path):
    data = {k: v for k, v in SOCIAL_LOGIN.items() if k != "profileArn"}
    path = write(tmp_path / "t.json", data)
    settings = Settings(kiro_profile_arn="arn:aws:codewhisperer:us-east-1:1:profile/SET")
    assert load_login_file(path, label="x", source="f", settings=settings).spec.profile_arn == (
        "arn:aws:codewhisperer:us-east-1:1:profile/SET"
    )


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"[1, 2]", b'{"provider": "Github"}', b'{"accessToken": 5}']
)
def test_unusable_files_raise_a_clear_error_without_secrets(tmp_path, content):
    path = tmp_path / "t.json"
    path.write_bytes(content)
    with pytest.raises(CredentialError):
        load_login_file(path, label="x", source="f", settings=Settings())


def test_missing_file(tmp_path):
    with pytest.raises(TokenFileError, match="no Kiro login file"):
        load_login_file(tmp_path / "nope.json", label="x", source="f", settings=Settings())


def test_write_back_keeps_unknown_fields_and_makes_the_file_private(tmp_path):
    path = write(tmp_path / "kiro-auth-token.json", SOCIAL_LOGIN, mode=0o640)
    update_login_file(path, {"accessToken": "new-access-0002", "refreshToken": "new-refresh-0002"})
    data = orjson.loads(path.read_bytes())
    assert data["accessToken"] == "new-access-0002"
    assert data["refreshToken"] == "new-refresh-0002"
    assert data["someFutureField"] == {"kept": True}
    assert data["provider"] == "Github"
    assert list(data)[:2] == ["accessToken", "refreshToken"]  # key order kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # not the old 0640: it holds secrets
    assert os.listdir(tmp_path) == ["kiro-auth-token.json"]  # no temporary file left


def test_write_back_goes_through_a_symlink_to_its_target(tmp_path):
    # The login file is often a link into a synced folder: replacing the link with a regular
    # file would leave the target (which the IDE reads) with a refresh token now invalid.
    real_dir = tmp_path / "synced"
    real_dir.mkdir()
    target = write(real_dir / "kiro-auth-token.json", SOCIAL_LOGIN, mode=0o644)
    link_dir = tmp_path / "cache"
    link_dir.mkdir()
    link = link_dir / "kiro-auth-token.json"
    link.symlink_to(Path("..") / "synced" / "kiro-auth-token.json")
    stamp, _ = update_login_file(link, {"refreshToken": "rotated-refresh-0005"})
    assert link.is_symlink()
    assert os.readlink(link) == str(Path("..") / "synced" / "kiro-auth-token.json")
    data = orjson.loads(target.read_bytes())
    assert data["refreshToken"] == "rotated-refresh-0005"
    assert data["someFutureField"] == {"kept": True}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(os.listdir(real_dir)) == ["kiro-auth-token.json"]  # no temporary file left
    assert os.listdir(link_dir) == ["kiro-auth-token.json"]
    assert stamp == stamp_of(link)  # the stamp is the target's: our own write is not a change


def test_a_new_file_is_private(tmp_path):
    path = tmp_path / "new.json"
    write_json_atomic(path, {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_crash_between_write_and_replace_leaves_the_old_file(tmp_path, monkeypatch):
    path = write(tmp_path / "kiro-auth-token.json", SOCIAL_LOGIN)
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt("power cut")  # not even an Exception: the cleanup still runs

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        update_login_file(path, {"accessToken": "new-access-0003"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["kiro-auth-token.json"]


def test_crash_while_writing_the_temporary_file(tmp_path, monkeypatch):
    path = write(tmp_path / "kiro-auth-token.json", SOCIAL_LOGIN)
    before = path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        update_login_file(path, {"accessToken": "new-access-0004"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["kiro-auth-token.json"]


def test_never_overwrites_a_file_it_cannot_parse(tmp_path):
    path = tmp_path / "kiro-auth-token.json"
    path.write_bytes(b"{half written")
    with pytest.raises(TokenFileError):
        update_login_file(path, {"accessToken": "x"})
    assert path.read_bytes() == b"{half written"


def test_stamp_changes_when_another_program_writes(tmp_path):
    path = write(tmp_path / "t.json", SOCIAL_LOGIN)
    first = stamp_of(path)
    update_login_file(path, {"accessToken": "changed-by-another-program"})
    assert stamp_of(path) != first  # os.replace gives a new inode even within one mtime tick
    assert stamp_of(tmp_path / "missing.json") is None
