"""Settings: one declaration each (ki2api/settings.py), read from the environment by
``Settings.from_env``; each bad value is one sentence naming its variable, and the README's
tables are the declarations'."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ki2api import cli
from ki2api.settings import (
    DEFAULT_API_KEY,
    README_TABLES,
    Settings,
    SettingsError,
    Timeouts,
    declared,
    markdown_table,
    user_data_dir,
    with_tables,
)

ROOT = Path(__file__).resolve().parent.parent


def problems(environ: dict[str, str], **overrides: Any) -> list[str]:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(environ, **overrides)
    return raised.value.problems


# --- reading ------------------------------------------------------------------------------------


def test_an_empty_environment_gives_the_declared_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({"HOME": str(tmp_path)})
    # The defaults that depend on the home folder: from the mapping, not from os.environ.
    assert settings == Settings(kiro_token_file=settings.kiro_token_file).replace(
        kiro_token_dirs=settings.kiro_token_dirs, data_dir=settings.data_dir
    )
    assert settings.data_dir == user_data_dir({"HOME": str(tmp_path)})
    assert settings.data_dir_persistent
    assert (settings.host, settings.port, settings.log_level) == ("127.0.0.1", 8989, "info")
    assert settings.api_key == DEFAULT_API_KEY and settings.api_key_is_default
    assert settings.kiro_token_file == tmp_path / ".aws/sso/cache/kiro-auth-token.json"
    assert not settings.kiro_token_file_explicit
    assert settings.kiro_token_dirs == (settings.kiro_token_file.parent,)
    assert settings.timeouts == Timeouts()


def test_values_are_converted_and_normalised(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "HOME": str(tmp_path),
            "API_KEY": "  pasted-with-a-newline\n",
            "PORT": "9000",
            "LOG_LEVEL": "DEBUG",
            "KIRO_POOL_STRATEGY": " Round_Robin ",
            "KIRO_AUTH_METHOD": "Builder-ID",
            "METRICS_PUBLIC": "yes",
            "ALLOW_PRIVATE_IMAGE_URLS": "off",
            "KIRO_IDLE_TIMEOUT": "2.5",
            "KIRO_TOKEN_FILE": "~/login.json",
            "KIRO_TOKEN_DIRS": os.pathsep.join(["/srv/a", "", "~/b"]),
            "CORS_ORIGINS": "https://app.example.com, http://127.0.0.1:3000,",
            "RATE_LIMIT": "60/minute",
            "MODEL_ALIASES": '{"gpt-4o": "auto"}',
            "MAX_MESSAGES": "",  # empty: the default
            "ADMIN_KEY": "   ",  # blank: unset
        }
    )
    assert settings.api_key == "pasted-with-a-newline" and not settings.api_key_is_default
    assert (settings.port, settings.log_level, settings.kiro_pool_strategy) == (
        9000,
        "debug",
        "round_robin",
    )
    assert settings.kiro_auth_method == "idc"
    assert settings.metrics_public is True and settings.allow_private_image_urls is False
    assert settings.timeouts == Timeouts(idle=2.5)
    home = Path.home()  # "~" is the process's home, as a shell would expand it
    assert settings.kiro_token_file == home / "login.json"
    assert settings.kiro_token_file_explicit
    login_folder = tmp_path / ".aws/sso/cache"  # the Kiro IDE's, from the given HOME
    assert settings.kiro_token_dirs == (login_folder, Path("/srv/a"), home / "b")
    assert settings.cors_origins == ("https://app.example.com", "http://127.0.0.1:3000")
    assert settings.max_messages == 10_000 and settings.admin_key is None


def test_from_env_reads_the_mapping_it_is_given_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("API_KEY", "from-the-process")
    assert Settings.from_env({}).port == 8989
    assert Settings.from_env({}).api_key == DEFAULT_API_KEY
    assert Settings().port == 8989  # keyword construction reads no environment at all
    assert Settings.from_env().port == 1234  # no mapping: the process's


def test_a_space_listens_on_7860_unless_told_otherwise() -> None:
    space = Settings.from_env({"SPACE_ID": "alice/ki2api", "SPACE_HOST": "alice-ki2api.hf.space"})
    assert (space.on_space, space.host, space.port) == (True, "0.0.0.0", 7860)
    assert space.space_host == "alice-ki2api.hf.space"
    assert space.api_key_is_default  # no API_KEY secret: the API stays off
    chosen = Settings.from_env({"SPACE_ID": "alice/ki2api", "PORT": "8000", "HOST": "::"})
    assert (chosen.host, chosen.port) == ("::", 8000)
    assert not Settings.from_env({}).on_space


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"PORT": "7000", "KI2API_DEMO": "0"}, port=9123, demo=True)
    assert (settings.port, settings.demo) == (9123, True)


def test_settings_are_frozen_and_replace_makes_a_checked_copy() -> None:
    settings = Settings(api_key="k-123", port=8000)
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]
    moved = settings.replace(port=8001, timeouts=Timeouts(refresh=0.5))
    assert (moved.port, moved.api_key, moved.timeouts.refresh) == (8001, "k-123", 0.5)
    assert settings.port == 8000
    if sys.version_info >= (3, 13):
        assert copy.replace(settings, port=8002).port == 8002  # type: ignore[attr-defined]
    with pytest.raises(SettingsError) as raised:
        settings.replace(port=0, prot=1)
    assert raised.value.problems == [
        'PORT must be a whole number from 1 to 65535 (got "0")',
        "prot is not a setting",
    ]


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings(api_key="api-secret-1234", admin_key="admin-secret-5678")
    assert "secret" not in repr(settings)
    assert "port=8989" in repr(settings)


def test_fields_are_plain_attributes_on_the_request_path() -> None:
    """The gateway and the endpoints read settings per request: each read must stay an
    instance-dict lookup (no property, descriptor or __getattr__ in the way)."""
    settings = Settings()
    assert type(settings).__getattribute__ is object.__getattribute__
    for name in ("max_body_bytes", "max_messages", "demo", "upstream_attempts"):
        assert name in vars(settings) and not hasattr(type(settings), name)
    assert "first_byte" in vars(settings.timeouts)


# --- bad values: one sentence each, naming the variable -----------------------------------


@pytest.mark.parametrize(
    ("environ", "sentence"),
    [
        ({"PORT": "80a"}, 'PORT must be a whole number from 1 to 65535 (got "80a")'),
        ({"PORT": "70000"}, 'PORT must be a whole number from 1 to 65535 (got "70000")'),
        (
            {"MAX_BODY_BYTES": "0"},
            'MAX_BODY_BYTES must be a whole number of bytes, 1 or more (got "0")',
        ),
        (
            {"MAX_CONCURRENT_PER_ACCOUNT": "-1"},
            'MAX_CONCURRENT_PER_ACCOUNT must be a whole number, 0 or more (got "-1")',
        ),
        (
            {"KIRO_FIRST_BYTE_TIMEOUT": "0"},
            'KIRO_FIRST_BYTE_TIMEOUT must be a number of seconds above 0 (got "0")',
        ),
        (
            {"QUEUE_TIMEOUT": "nan"},
            'QUEUE_TIMEOUT must be a number of seconds, 0 or more (got "nan")',
        ),
        (
            {"PLAYGROUND_MAX_SHARE": "1.5"},
            'PLAYGROUND_MAX_SHARE must be a number from 0 to 1 (got "1.5")',
        ),
        (
            {"LOG_LEVEL": "loud"},
            'LOG_LEVEL must be one of debug, info, warning, error, critical (got "loud")',
        ),
        (
            {"KIRO_POOL_STRATEGY": "random"},
            'KIRO_POOL_STRATEGY must be one of lru, round_robin, first (got "random")',
        ),
        (
            {"KIRO_AUTH_METHOD": "oauth"},
            'KIRO_AUTH_METHOD must be social, idc or api_key (got "oauth")',
        ),
        (
            {"METRICS_PUBLIC": "maybe"},
            'METRICS_PUBLIC must be 1, true, yes or on, or 0, false, no or off (got "maybe")',
        ),
        (
            {"KIRO_API_URL": "codewhisperer.example/chat"},
            'KIRO_API_URL must be an http:// or https:// URL (got "codewhisperer.example/chat")',
        ),
        (
            {"KIRO_PROXY": "127.0.0.1:7890"},
            "KIRO_PROXY must be a proxy URL such as http://127.0.0.1:7890 or "
            "socks5h://user:pass@host:1080 (its value is not shown)",
        ),
        (
            {"KIRO_REGION": "us_east_1"},
            'KIRO_REGION must be an AWS region such as us-east-1 (got "us_east_1")',
        ),
        (
            {"RATE_LIMIT": "60/fortnight"},
            "RATE_LIMIT must be a rate such as 60/minute (per second, minute, hour or day) "
            '(got "60/fortnight")',
        ),
        (
            {"RATE_LIMIT": "5/0minutes"},  # a zero period: a division by zero per request
            "RATE_LIMIT must be a rate such as 60/minute (per second, minute, hour or day) "
            '(got "5/0minutes")',
        ),
        (
            {"CORS_ORIGINS": "https://app.example.com/"},
            "CORS_ORIGINS must be comma-separated origins such as https://app.example.com "
            '(no path), or * (got "https://app.example.com/")',
        ),
        (
            {"MODEL_ALIASES": "gpt-4o=auto"},
            'MODEL_ALIASES must be a JSON object of names, e.g. {"gpt-4o": "claude-sonnet-4-6"} '
            '(got "gpt-4o=auto")',
        ),
    ],
)
def test_each_bad_value_is_one_sentence_naming_its_variable(
    environ: dict[str, str], sentence: str
) -> None:
    assert problems(environ) == [sentence]


def test_bad_paths(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    dirs = os.pathsep.join([str(tmp_path), str(a_file)])
    assert problems({"KIRO_TOKEN_FILE": str(tmp_path), "KIRO_TOKEN_DIRS": dirs}) == [
        f'KIRO_TOKEN_FILE must be the path of a login file, not of a folder (got "{tmp_path}")',
        f"KIRO_TOKEN_DIRS must be folders separated by {os.pathsep!r}, none of them a file "
        f'(got "{dirs}")',
    ]
    assert problems({"DATA_DIR": str(a_file), "USAGE_FLUSH_SECONDS": "0"}) == [
        f'DATA_DIR must be a folder, not a file (got "{a_file}")',
        'USAGE_FLUSH_SECONDS must be a number of seconds above 0 (got "0")',
    ]


def test_several_bad_values_are_all_listed_in_declaration_order() -> None:
    assert problems(
        {"PORT": "eighty", "LOG_LEVEL": "verbose", "KIRO_IDLE_TIMEOUT": "-1", "API_KEY": "ok-key"}
    ) == [
        'PORT must be a whole number from 1 to 65535 (got "eighty")',
        'LOG_LEVEL must be one of debug, info, warning, error, critical (got "verbose")',
        'KIRO_IDLE_TIMEOUT must be a number of seconds above 0 (got "-1")',
    ]


def test_a_bad_secret_is_named_but_never_shown() -> None:
    (sentence,) = problems({}, api_key="")
    assert sentence == "API_KEY must be a non-empty value (its value is not shown)"


def test_a_long_or_odd_value_is_shown_bounded_and_on_one_line() -> None:
    (sentence,) = problems({"HOST": "x", "PORT": "1\n2" + "9" * 300})
    assert "\n" not in sentence and sentence.endswith("…)") and len(sentence) < 300


# --- the commands ------------------------------------------------------------------------------


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_app_py_with_a_bad_port_says_so_in_one_line_and_exits_2() -> None:
    result = _run(["app.py"], {"PORT": "80a"})
    assert result.returncode == 2
    assert result.stderr == 'error: PORT must be a whole number from 1 to 65535 (got "80a")\n'
    assert result.stdout == ""


def test_serve_lists_every_bad_value_and_starts_nothing() -> None:
    result = _run(
        ["-m", "ki2api", "serve", "--demo"],
        {"PORT": "80a", "KIRO_POOL_STRATEGY": "fastest", "API_KEY": "serve-key-0123"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        'error: PORT must be a whole number from 1 to 65535 (got "80a")',
        'error: KIRO_POOL_STRATEGY must be one of lru, round_robin, first (got "fastest")',
    ]
    assert "Traceback" not in result.stderr and "listening" not in result.stdout


def test_a_bad_port_option_is_checked_like_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ki2api.server.run import main

    with pytest.raises(SystemExit) as exited:
        main(["--port", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: PORT must be a whole number from 1")


def test_settings_command_lists_values_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("API_KEY", "the-api-key-value-9876")
    monkeypatch.setenv("KIRO_REFRESH_TOKEN", "aorAAAAAGrefresh-token-7d1c")
    monkeypatch.setenv("KIRO_IDLE_TIMEOUT", "5")
    assert cli.main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "the-api-key-value" not in out and "refresh-token" not in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["API_KEY"] == ["set", "…9876", "set"]
    assert rows["KIRO_REFRESH_TOKEN"] == ["set", "…7d1c", "set"]
    assert rows["KIRO_IDLE_TIMEOUT"] == ["5", "set"]
    assert rows["PORT"] == ["8989", "default"]
    assert set(rows) == {item.env for item in declared()}


def test_settings_command_exits_2_on_a_bad_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HEADER_TIMEOUT", "soon")
    with pytest.raises(SystemExit) as exited:
        cli.main(["settings"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        'error: HEADER_TIMEOUT must be a number of seconds, 0 or more (got "soon")\n'
    )


# --- the README's tables are the declarations' ------------------------------------------------


def test_readme_tables_match_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == with_tables(readme), (
        "README.md's settings tables differ from ki2api/settings.py: run "
        "`python -m ki2api settings --update-readme`"
    )


def test_the_table_has_every_variable_once_with_a_description() -> None:
    table = markdown_table()
    for item in declared():
        assert table.count(f"| `{item.env}` |") == 1, item.env
        assert item.info.description, item.env
    envs = [item.env for item in declared()]
    assert len(envs) == len(set(envs))
    assert "| `LOG_LEVEL` | how much the log says: `debug`, `info`" in table
    assert "| `PORT` | the port to listen on | `8989` (on a Space `7860`) |" in table
    assert "| `MAX_BODY_BYTES` |" in table and "`20971520` (20 MiB)" in table
    zh = markdown_table("zh")
    assert zh.startswith("| 变量 | 作用 |") and "| `API_KEY` | 客户端使用的密钥" in zh


def test_update_readme_rewrites_only_the_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    begin, end = README_TABLES["en"]
    zh_begin, zh_end = README_TABLES["zh"]
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{begin}\n| stale |\n{end}\nmiddle\n{zh_begin}\n{zh_end}\nend\n")
    assert cli.main(["settings", "--update-readme", str(path)]) == 0
    text = path.read_text()
    assert text.startswith(f"intro\n{begin}\n| variable | meaning | default |")
    assert f"{end}\nmiddle\n{zh_begin}\n| 变量 | 作用 |" in text
    assert text.endswith(f"{zh_end}\nend\n")
    assert "stale" not in text
    assert cli.main(["settings", "--update-readme", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("already up to date")


def test_markdown_option_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table() + "\n"
