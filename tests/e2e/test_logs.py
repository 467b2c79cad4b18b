"""Logs and privacy, end to end: prompt text reaches the log only when the
operator enabled both `log.log_content` and debug level (test_metrics.py
checks the default: debug level, content off, no prompt text), and every
plain-format line carries the app and request id."""

from __future__ import annotations

import pytest

from slmd_client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.default_model]

SECRET = "walrus-ember-5521"


@pytest.mark.parametrize("log_content", [True, False])
def test_prompt_text_only_with_log_content(daemon_factory, default_model, tmp_path, log_content):
    cfg = tmp_path / "slmd.toml"
    cfg.write_text(f'[auth]\ntokens = {{"tok" = "notes"}}\n\n[metrics]\nport = 0\n\n'
                   f'[log]\nlevel = "debug"\nlog_content = {str(log_content).lower()}\n')
    d = daemon_factory(default_model, "--threads", "1", "--config", str(cfg))
    with Client(d.target, token="tok", timeout=60) as c:
        chunks = list(c.generate(f"Repeat: {SECRET}", max_tokens=3, request_id="req-logs-1"))
    assert chunks[-1].usage is not None
    d.stop()
    log = d.log_text()
    assert (SECRET in log) is log_content
    finished = [ln for ln in log.splitlines() if "slmd.core [notes req-logs-1] request finished" in ln]
    assert len(finished) == 1, log[-2000:]
    if log_content:
        line = next(ln for ln in log.splitlines() if SECRET in ln)
        assert "[notes req-logs-1]" in line  # the content line names its request too
