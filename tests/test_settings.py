"""Settings: defaults, precedence flag > env > config file, Fly aliases, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import REPO
from whisperfarm.errors import UsageError
from whisperfarm.settings import (
    ALL_FORMATS,
    DEFAULT_FLY_API_URL,
    DEFAULT_FORMATS,
    config_path,
    load_settings,
    parse_formats,
)
from whisperfarm.subtitles import CueStyle

SECRET = "FlyV1 fm2_secret-token-value-do-not-print"


pytestmark = pytest.mark.usefixtures("no_fly_env")


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(home: Path) -> None:
    settings = load_settings()
    assert settings.home == home
    assert settings.model == "small.en"
    assert settings.compute_type == "int8"
    assert settings.language is None
    assert settings.beam_size == 5
    assert settings.word_timestamps is False
    assert settings.workers is None
    assert (settings.host, settings.port) == ("127.0.0.1", 0)
    assert parse_formats(settings.formats) == list(DEFAULT_FORMATS)
    assert (settings.lease_seconds, settings.max_attempts) == (60.0, 3)
    assert (settings.chunk_min_seconds, settings.chunk_max_seconds) == (12.0, 27.0)
    assert settings.overlap_seconds == 3.0
    assert settings.fly_api_token is None
    assert settings.fly_app is None
    assert settings.fly_api_url == DEFAULT_FLY_API_URL
    assert settings.max_machines == 10
    assert settings.budget is None
    assert settings.ledger_path == home / "ledger.db"
    assert settings.episodes_dir == home / "episodes"
    assert settings.logs_dir == home / "logs"


def test_config_file_in_home_is_read(home: Path) -> None:
    write_config(home / "config.toml", 'model = "base.en"\nbeam_size = 2\nformats = "srt"\n')
    assert config_path() == home / "config.toml"
    settings = load_settings()
    assert (settings.model, settings.beam_size, settings.formats) == ("base.en", 2, "srt")


def test_config_file_named_by_whisperfarm_config(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home / "config.toml", 'model = "from-home"\n')
    named = write_config(
        tmp_path / "elsewhere" / "wf.toml", 'model = "from-named"\nmax_attempts = 5\n'
    )
    monkeypatch.setenv("WHISPERFARM_CONFIG", str(named))
    assert config_path() == named
    settings = load_settings()
    assert (settings.model, settings.max_attempts) == ("from-named", 5)


def test_env_overrides_the_config_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(home / "config.toml", 'model = "base.en"\nbeam_size = 2\n')
    monkeypatch.setenv("WHISPERFARM_MODEL", "medium.en")
    settings = load_settings()
    assert settings.model == "medium.en"
    assert settings.beam_size == 2  # untouched by env: still the file's


def test_a_flag_overrides_env_and_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(home / "config.toml", 'model = "base.en"\n')
    monkeypatch.setenv("WHISPERFARM_MODEL", "medium.en")
    assert load_settings(model="large-v3").model == "large-v3"


def test_a_flag_given_as_none_is_not_given(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPERFARM_MODEL", "medium.en")
    settings = load_settings(model=None, beam_size=None)
    assert (settings.model, settings.beam_size) == ("medium.en", 5)


def test_env_values_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPERFARM_WORD_TIMESTAMPS", "true")
    monkeypatch.setenv("WHISPERFARM_LEASE_SECONDS", "12.5")
    monkeypatch.setenv("WHISPERFARM_WORKERS", "0")
    settings = load_settings()
    assert settings.word_timestamps is True
    assert settings.lease_seconds == 12.5
    assert settings.workers == 0


def test_home_from_env_and_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WHISPERFARM_HOME", "~/wf-home")
    settings = load_settings()
    assert settings.home == tmp_path / "wf-home"
    assert config_path() == tmp_path / "wf-home" / "config.toml"


# Fly settings -----------------------------------------------------------------------------------


def test_fly_token_and_app_from_flys_own_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", SECRET)
    monkeypatch.setenv("FLY_APP", "wf-app")
    settings = load_settings()
    assert settings.fly_api_token is not None
    assert settings.fly_api_token.get_secret_value() == SECRET
    assert settings.fly_app == "wf-app"


def test_whisperfarm_fly_api_token_wins_over_flys(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flyctl user has FLY_API_TOKEN in the shell; WHISPERFARM_FLY_API_TOKEN is how they
    point whisperfarm at another org, so it must win (as its place in the aliases says)."""
    monkeypatch.setenv("FLY_API_TOKEN", "fly-token")
    monkeypatch.setenv("WHISPERFARM_FLY_API_TOKEN", "wf-token")
    token = load_settings().fly_api_token
    assert token is not None and token.get_secret_value() == "wf-token"


def test_whisperfarm_fly_app_wins_over_flys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_APP", "fly-app")
    monkeypatch.setenv("WHISPERFARM_FLY_APP", "wf-app")
    assert load_settings().fly_app == "wf-app"


def test_fly_access_token_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_ACCESS_TOKEN", "access")
    token = load_settings().fly_api_token
    assert token is not None and token.get_secret_value() == "access"


def test_fly_settings_from_the_config_file_lose_to_env(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(home / "config.toml", 'fly_app = "file-app"\nregion = "ord"\n')
    assert (load_settings().fly_app, load_settings().region) == ("file-app", "ord")
    monkeypatch.setenv("FLY_APP", "env-app")
    assert load_settings().fly_app == "env-app"
    assert load_settings(fly_app="flag-app").fly_app == "flag-app"


def test_fly_api_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().fly_api_url == DEFAULT_FLY_API_URL
    monkeypatch.setenv("FLY_FLAPS_BASE_URL", "http://flaps.internal:4280")
    assert load_settings().fly_api_url == "http://flaps.internal:4280"
    monkeypatch.setenv("WHISPERFARM_FLY_API_URL", "http://127.0.0.1:9999")
    assert load_settings().fly_api_url == "http://127.0.0.1:9999"
    assert load_settings(fly_api_url="http://flag").fly_api_url == "http://flag"


def test_the_fly_token_never_appears_in_repr_or_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLY_API_TOKEN", SECRET)
    settings = load_settings()
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in repr(settings.model_dump())
    assert "fm2_" not in repr(settings)


# Invalid values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WHISPERFARM_BEAM_SIZE", "0"),
        ("WHISPERFARM_BEAM_SIZE", "11"),
        ("WHISPERFARM_BEAM_SIZE", "wide"),
        ("WHISPERFARM_PORT", "70000"),
        ("WHISPERFARM_LEASE_SECONDS", "0"),
        ("WHISPERFARM_MAX_ATTEMPTS", "0"),
        ("WHISPERFARM_WORD_TIMESTAMPS", "sometimes"),
        ("WHISPERFARM_BUDGET", "-1"),
        ("WHISPERFARM_COMPUTE_TYPE", "bogus"),  # before any worker fails to load the model
    ],
)
def test_invalid_env_values_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match="invalid setting") as raised:
        load_settings()
    field = name.removeprefix("WHISPERFARM_").lower()
    assert field in str(raised.value) and name in str(raised.value)  # where to fix it
    assert "\n" not in str(raised.value) and raised.value.exit_code == 2


def test_a_bad_variable_names_no_flag_it_may_not_have(monkeypatch: pytest.MonkeyPatch) -> None:
    """WHISPERFARM_VAD=maybe was told to fix '--vad', a flag no command has."""
    monkeypatch.setenv("WHISPERFARM_VAD", "maybe")
    with pytest.raises(UsageError) as raised:
        load_settings()
    message = str(raised.value)
    assert "WHISPERFARM_VAD or vad in the config" in message
    assert "--" not in message


def test_a_bad_flag_says_it_came_from_the_command_line() -> None:
    with pytest.raises(UsageError, match=r"threads \(given on the command line\)"):
        load_settings(threads=0)


@pytest.mark.parametrize(
    "flags",
    [{"max_attempts": 0}, {"threads": 0}, {"max_machines": 0}, {"overlap_seconds": -1.0}],
)
def test_invalid_flags_are_usage_errors(flags: dict) -> None:
    with pytest.raises(UsageError):
        load_settings(**flags)


def test_invalid_config_file_values_are_usage_errors(home: Path) -> None:
    write_config(home / "config.toml", "beam_size = 99\n")
    with pytest.raises(UsageError, match="beam_size"):
        load_settings()


def test_a_config_file_that_is_not_toml_is_a_usage_error(home: Path) -> None:
    write_config(home / "config.toml", "model = \n[[[\n")
    with pytest.raises(UsageError, match="invalid setting"):
        load_settings()


def test_a_missing_config_file_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WHISPERFARM_CONFIG", raising=False)
    monkeypatch.setenv("WHISPERFARM_HOME", str(tmp_path))  # no config.toml in it
    assert load_settings().model == "small.en"


def test_a_config_file_named_that_is_not_there_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WHISPERFARM_CONFIG with a typo was ignored: the run went on with the defaults."""
    monkeypatch.setenv("WHISPERFARM_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(UsageError, match=r"WHISPERFARM_CONFIG names .*nope.toml, which is no file"):
        load_settings()


def test_a_misspelt_key_in_the_config_file_is_a_usage_error(home: Path) -> None:
    """It was ignored without a word."""
    write_config(home / "config.toml", 'modle = "tiny.en"\n')
    with pytest.raises(UsageError, match=r"unknown setting 'modle' in .*did you mean model"):
        load_settings()


def test_unknown_variables_with_the_prefix_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers' own variables (WHISPERFARM_URL, WHISPERFARM_TOKEN …) share the prefix."""
    monkeypatch.setenv("WHISPERFARM_URL", "http://somewhere:1")
    monkeypatch.setenv("WHISPERFARM_GIVE_UP_SECONDS", "5")
    assert load_settings().model == "small.en"


# Formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("all", list(ALL_FORMATS)),
        (" ALL ", list(ALL_FORMATS)),
        ("srt", ["srt"]),
        ("srt, VTT", ["srt", "vtt"]),
        ("json,txt,json", ["json", "txt"]),
        ("tsv,,txt,", ["tsv", "txt"]),
    ],
)
def test_parse_formats(value: str, expected: list[str]) -> None:
    assert parse_formats(value) == expected


@pytest.mark.parametrize(
    ("value", "named"), [("pdf", "pdf"), ("srt,docx", "docx"), ("", "(none)"), (" , ", "(none)")]
)
def test_parse_formats_rejects_unknown_or_empty(value: str, named: str) -> None:
    with pytest.raises(UsageError, match="use a comma list") as raised:
        parse_formats(value)
    assert named in str(raised.value)


def test_formats_setting_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHISPERFARM_FORMATS", "tsv,srt")
    assert parse_formats(load_settings().formats) == ["tsv", "srt"]


def test_subtitle_settings_from_file_env_and_flags(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().cue_style() == CueStyle()  # 42 characters, 2 lines, no karaoke
    write_config(home / "config.toml", "max_line_width = 32\nmax_line_count = 3\n")
    monkeypatch.setenv("WHISPERFARM_MAX_LINE_COUNT", "1")
    style = load_settings().cue_style()
    assert (style.max_line_width, style.max_line_count) == (32, 1)
    assert load_settings(max_line_width=20).cue_style().max_line_width == 20
    with pytest.raises(UsageError, match="max_line_width"):
        load_settings(max_line_width=0)


def test_highlight_words_turns_word_timestamps_on_unless_they_were_turned_off(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(highlight_words=True)
    assert settings.cue_style().highlight_words and settings.word_timestamps
    with pytest.raises(UsageError, match="--highlight-words needs word timestamps"):
        load_settings(highlight_words=True, word_timestamps=False)
    monkeypatch.setenv("WHISPERFARM_HIGHLIGHT_WORDS", "true")
    assert load_settings().word_timestamps is True


def test_the_readmes_config_example_is_a_valid_config(home: Path) -> None:
    """The README's Configuration example, saved as the config file, loads and is fit to
    transcribe with."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Configuration") :]
    example = section[section.index("```toml\n") + len("```toml\n") :]
    write_config(home / "config.toml", example[: example.index("```")])
    settings = load_settings().checked_for_transcription()
    assert settings.model == "small.en" and settings.formats == "txt,srt,json"
