"""What `chatlog replay --from-timestamp` tells the operator (issue 12, item 15)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infra.cli import build_parser
from processors.__main__ import _rewound


def test_a_bad_timestamp_is_refused_by_the_command_the_operator_typed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(
            ["replay", "--projection", "postgres", "--from-timestamp", "yesterday"]
        )
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "chatlog replay: error: argument --from-timestamp: 'yesterday' is not an ISO-8601" in err
    assert "python -m processors" not in err


def test_a_timestamp_without_zone_is_utc() -> None:
    args = build_parser().parse_args(
        ["replay", "--projection", "postgres", "--from-timestamp", "2026-12-01T20:00:00"]
    )
    assert args.from_timestamp == datetime(2026, 12, 1, 20, tzinfo=UTC)


def test_the_rewind_says_what_it_did() -> None:
    past = datetime(2026, 1, 1, tzinfo=UTC)
    assert _rewound("postgres", past, 1234) == (
        "postgres: checkpoints rewound to 2026-01-01T00:00:00+00:00; 1,234 events to fold again"
    )
    assert "nothing rewound" in _rewound("postgres", past, 0)
    assert "in the future" in _rewound("search", datetime(2999, 1, 1, tzinfo=UTC), 0)
