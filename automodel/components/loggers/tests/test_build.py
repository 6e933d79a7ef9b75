import pytest

from automodel.components.loggers import LoggerError, LoggingConfig


def test_logging_config_log_dir_fallbacks():
    assert LoggingConfig().resolve_log_dir("ckpts/run1") == "ckpts/run1"
    assert LoggingConfig().resolve_log_dir(None) == "logs"
    assert LoggingConfig(log_dir="mylogs").resolve_log_dir("ckpts") == "mylogs"
    with pytest.raises(LoggerError, match="logging.log_every_steps must be >= 1"):
        LoggingConfig(log_every_steps=0)
