from pathlib import Path

import pytest

from slmd.config import ConfigError, load_config


def test_precedence_file_env_flags(tmp_path: Path):
    f = tmp_path / "slmd.toml"
    f.write_text('[engine]\nmax_running = 4\nmax_waiting = 10\n[model]\ncontext_per_sequence = 1024\n')
    env = {"SLMD_ENGINE__MAX_RUNNING": "6", "SLMD_MODEL__CONTEXT_PER_SEQUENCE": "512"}
    cfg = load_config(f, environ=env, flags={"engine.max_running": 8})
    assert cfg.engine.max_running == 8  # flag beats env beats file
    assert cfg.model.context_per_sequence == 512  # env beats file
    assert cfg.engine.max_waiting == 10  # file beats default


def test_invalid_value_names_key_and_allowed_values(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"engine\.max_running"):
        load_config(None, environ={"SLMD_ENGINE__MAX_RUNNING": "0"})
    with pytest.raises(ConfigError, match=r"log\.level: allowed values: 'debug', 'info', 'warning' or 'error'"):
        load_config(None, environ={"SLMD_LOG__LEVEL": "loud"})
    f = tmp_path / "x.toml"
    f.write_text("[engine]\nmax_runing = 3\n")
    with pytest.raises(ConfigError, match=r"engine\.max_runing: unknown key"):
        load_config(f, environ={})


def test_tcp_requires_tokens_and_loopback():
    with pytest.raises(ConfigError, match="auth.tokens"):
        load_config(None, environ={}, flags={"server.tcp.port": 7000})
    with pytest.raises(ConfigError, match="loopback"):
        load_config(None, environ={"SLMD_SERVER__TCP__HOST": "0.0.0.0"})
    cfg = load_config(None, environ={"SLMD_AUTH__TOKENS": '{"t1": "app1"}'}, flags={"server.tcp.port": 7000})
    assert cfg.auth.tokens == {"t1": "app1"}


def test_bad_toml_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})


def test_other_slmd_variables_are_not_settings():
    # tools and tests use SLMD_* variables of their own (SLMD_REQUIRE_MODELS, SLMD_SOAK_SECONDS...)
    cfg = load_config(None, environ={"SLMD_REQUIRE_MODELS": "1", "SLMD_SOAK_SECONDS": "60",
                                     "SLMD_DATA_DIR": "/tmp/slmd-x"})
    assert str(cfg.data_dir) == "/tmp/slmd-x"


def test_kv_pool_tokens_from_env_and_its_limits():
    cfg = load_config(None, environ={"SLMD_ENGINE__KV_POOL_TOKENS": "2048"})
    assert cfg.engine.kv_pool_tokens == 2048 and load_config(None, environ={}).engine.kv_pool_tokens == 0
    with pytest.raises(ConfigError, match=r"engine\.kv_pool_tokens must be 0 \(off\) or >= 64"):
        load_config(None, environ={}, flags={"engine.kv_pool_tokens": 16})
    # deterministic output needs a KV stream per sequence: the combination is refused at start
    with pytest.raises(ConfigError, match=r"engine\.deterministic.*engine\.kv_pool_tokens = 0"):
        load_config(None, environ={"SLMD_ENGINE__DETERMINISTIC": "true"}, flags={"engine.kv_pool_tokens": 1024})
