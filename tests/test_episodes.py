"""Episode records: the flat training view, rewards, storage and the per-turn summary."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl2f.episodes import (
    EPISODE_SCHEMA,
    Episode,
    Turn,
    discounted_reward,
    format_summary,
    read_episodes,
    summarize,
    write_episodes,
    write_episodes_jsonl,
)
from rl2f.errors import DataError


def student(ids: list[int], correct: bool, logprobs: list[float] | None = None) -> Turn:
    return Turn(
        role="student",
        text=f"attempt {ids}",
        token_ids=ids,
        correct=correct,
        extracted=str(ids[0]),
        diagnostics={"expected": "7", "got": str(ids[0])},
        finish_reason="stop",
        logprobs=logprobs if logprobs is not None else [-0.5] * len(ids),
    )


def teacher(ids: list[int], leaked_attempts: int = 0, fell_back: bool = False) -> Turn:
    return Turn(
        role="teacher",
        text="Too high.",
        token_ids=ids,
        leak={"answer_string": leaked_attempts > 0, "evidence": ["7"] if leaked_attempts else []},
        leaked_attempts=leaked_attempts,
        fell_back=fell_back,
    )


def episode(turns: list[Turn], solved_at: int | None, group: int = 0, domain: str = "math"):
    return Episode(
        task_id=f"task-{domain}",
        domain=domain,
        split="train",
        policy="tiny",
        teacher="oracle",
        group=group,
        prompt_ids=[1, 2, 3],
        turns=turns,
        solved_at=solved_at,
        reward=discounted_reward(solved_at, 0.7),
        student_visible=["Calculate 3 + 4."]
        + ["Too high."] * sum(t.role == "teacher" for t in turns),
        end_reason="solved" if solved_at else "max_turns",
    )


def solved_at_two() -> Episode:
    return episode(
        [
            student([10, 11], correct=False, logprobs=[-0.25, -1.5]),
            teacher([20, 21, 22]),
            student([12, 13, 14], correct=True, logprobs=[-0.1, -0.2, -0.3]),
        ],
        solved_at=2,
    )


def test_discounted_reward() -> None:
    assert discounted_reward(1, 0.7) == 1.0
    assert discounted_reward(2, 0.7) == pytest.approx(0.7)
    assert discounted_reward(4, 0.7) == pytest.approx(0.7**3)
    assert discounted_reward(None, 0.7) == 0.0
    with pytest.raises(ValueError, match="1-based"):
        discounted_reward(0, 0.7)


def test_flat_view_masks_exactly_the_student_tokens() -> None:
    ep = solved_at_two()
    assert ep.completion_ids == [10, 11, 20, 21, 22, 12, 13, 14]
    assert ep.completion_mask == [1, 1, 0, 0, 0, 1, 1, 1]
    assert ep.completion_logprobs == [-0.25, -1.5, 0.0, 0.0, 0.0, -0.1, -0.2, -0.3]
    assert ep.messages == [
        {"role": "assistant", "content": "attempt [10, 11]"},
        {"role": "user", "content": "Too high."},
        {"role": "assistant", "content": "attempt [12, 13, 14]"},
    ]
    assert [t.role for t in ep.student_turns] == ["student", "student"]


def test_student_turn_without_logprobs_gets_zeros() -> None:
    turn = Turn(role="student", text="x", token_ids=[5, 6], correct=False)
    ep = episode([turn], solved_at=None)
    assert ep.completion_logprobs == [0.0, 0.0]


def test_turn_rejects_bad_role_and_misaligned_logprobs() -> None:
    with pytest.raises(ValueError, match="role"):
        Turn(role="system", text="x", token_ids=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 logprobs for 3 tokens"):
        Turn(role="student", text="x", token_ids=[1, 2, 3], logprobs=[-1.0, -1.0])


def test_parquet_round_trip(tmp_path) -> None:
    episodes = [
        solved_at_two(),
        episode(
            [
                student([7], False),
                teacher([8], leaked_attempts=2, fell_back=True),
                student([9], False),
            ],
            solved_at=None,
            group=1,
        ),
        episode([], solved_at=None, group=2),
    ]
    path = tmp_path / "out" / "episodes.parquet"
    write_episodes(path, episodes)
    assert read_episodes(path) == episodes
    # The derived columns are stored for readers outside Python.
    table = pq.read_table(path)
    assert table.schema.equals(EPISODE_SCHEMA)
    assert table.column("completion_mask").to_pylist()[0] == [1, 1, 0, 0, 0, 1, 1, 1]
    assert table.column("num_turns").to_pylist() == [2, 2, 0]
    assert not list(path.parent.glob(".*.tmp"))


def test_empty_episode_list_writes_a_readable_file(tmp_path) -> None:
    path = tmp_path / "episodes.parquet"
    write_episodes(path, [])
    assert read_episodes(path) == []


def test_read_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_episodes(tmp_path / "missing.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="garbage.parquet: not a readable Parquet"):
        read_episodes(garbage)
    partial = tmp_path / "partial.parquet"
    pq.write_table(pa.table({"task_id": ["a"]}), partial)
    with pytest.raises(DataError, match="partial.parquet: missing column"):
        read_episodes(partial)
    bad_role = tmp_path / "bad_role.parquet"
    write_episodes(bad_role, [solved_at_two()])
    table = pq.read_table(bad_role).to_pylist()
    table[0]["turns"][0]["role"] = "narrator"
    pq.write_table(pa.Table.from_pylist(table, schema=EPISODE_SCHEMA), bad_role)
    with pytest.raises(DataError, match=r"bad_role.parquet: row 0: .*role"):
        read_episodes(bad_role)


def test_jsonl_export_is_readable_conversation(tmp_path) -> None:
    path = tmp_path / "episodes.jsonl"
    write_episodes_jsonl(path, [solved_at_two()])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1
    record = records[0]
    assert record["solved_at"] == 2 and record["reward"] == pytest.approx(0.7)
    assert [t["role"] for t in record["turns"]] == ["student", "teacher", "student"]
    assert record["turns"][0]["correct"] is False
    assert record["turns"][1]["fell_back"] is False
    assert "token_ids" not in record["turns"][0]


def test_summary_counts_by_turn() -> None:
    episodes = [
        episode([student([1], True)], solved_at=1),
        solved_at_two(),
        episode(
            [
                student([1, 2], False),
                teacher([3], leaked_attempts=1),
                student([4], False),
                teacher([5], leaked_attempts=3, fell_back=True),
                student([6, 7, 8, 9], False),
            ],
            solved_at=None,
            domain="puzzle",
        ),
    ]
    summary = summarize(episodes, max_turns=3)
    assert summary["episodes"] == 3 and summary["tasks"] == 2
    assert summary["acc_by_turn"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert summary["active_by_turn"] == [3, 2, 1]
    assert summary["student_tokens_by_turn"] == pytest.approx([5 / 3, 2.0, 4.0])
    assert summary["critiques_by_turn"] == [2, 1, 0]
    assert summary["leaked_critiques_by_turn"] == [1, 1, 0]
    assert summary["leaked_attempts_by_turn"] == [1, 3, 0]
    assert summary["fallbacks_by_turn"] == [0, 1, 0]
    assert summary["mean_reward"] == pytest.approx((1 + 0.7 + 0) / 3)
    assert summary["end_reasons"] == {"max_turns": 1, "solved": 2}
    assert summary["by_domain"]["puzzle"]["acc_by_turn"] == [0.0, 0.0, 0.0]
    assert summary["by_domain"]["math"]["acc_by_turn"] == [0.5, 1.0, 1.0]
    json.dumps(summary)  # goes to summary.json and MLflow as is
    table = format_summary(summary)
    assert "3 episodes over 2 tasks" in table
    assert table.splitlines()[2].split() == ["1", "3", "0.333", "1.7", "2", "1", "0"]
    assert "ended: max_turns 1, solved 2" in table


def test_summary_refuses_more_attempts_than_max_turns() -> None:
    with pytest.raises(ValueError, match="more than 1 attempts"):
        summarize([solved_at_two()], max_turns=1)


def test_summary_of_nothing() -> None:
    summary = summarize([])
    assert summary["episodes"] == 0 and summary["acc_by_turn"] == []
    assert "0 episodes" in format_summary(summary)
