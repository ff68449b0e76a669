"""JAM_MAX_SESSIONS=auto: the bytes a decoder row is sized with are the bytes the decoder allocates for it, and the
sessions that fit follow from them and the free memory."""

import pytest

from engine.config import MAX_PROMPT_TOKENS, ConfigError, EngineConfig
from engine.lm.decoder import StepDecoder
from engine.runtime import memory


@pytest.mark.parametrize("weight_format", ["float32", "bfloat16"])
def test_a_rows_bytes_are_what_the_decoder_allocates_for_it(engine, weight_format):
    lm = engine.model.musicgen.lm
    decoder = StepDecoder(lm, max_rows=3, max_steps=40, weight_format=weight_format)
    decoder.reserve_condition_capacity()  # as capture_all does: the cross cache for the longest prompt
    assert decoder.cache_bytes == 3 * memory.row_bytes(lm, 40, MAX_PROMPT_TOKENS, weight_format)


def test_the_sessions_that_fit_leave_the_work_space_and_the_prediction_rows():
    gib = 2**30
    per_row = gib // 4
    # 21 GiB free: 5 of work space, 2 prediction rows (0.5), 15.5 left for sessions of 5 rows (1.25 each): 12
    assert memory.sessions_that_fit(21 * gib, per_row, rows_per_session=5, prediction_rows=2) == 12
    assert memory.sessions_that_fit(4 * gib, per_row, rows_per_session=5, prediction_rows=2) == 0
    assert memory.sessions_that_fit(10**6 * gib, per_row, 5, 2) == memory.MAX_AUTO_SESSIONS


def test_auto_is_read_from_the_environment_and_refused_on_a_cpu():
    config = EngineConfig.from_env({"JAM_MAX_SESSIONS": "auto"})
    assert config.max_sessions is None
    with pytest.raises(ValueError, match="auto"):
        assert config.session_rows
    with pytest.raises(ConfigError, match="integer or auto"):
        EngineConfig.from_env({"JAM_MAX_SESSIONS": "many"})
    with pytest.raises(ValueError, match="on a CPU set a number"):
        memory.free_device_bytes("cpu")
