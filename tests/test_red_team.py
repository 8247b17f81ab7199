"""The red_team stage: scripted hostile students against the real teachers (the oracle, and an
obedient LLM teacher served over real HTTP), its output file, and the report's table of it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from servers import FaultyChatServer
from test_rollout import math_tasks, obedient_llm
from transformers import AutoTokenizer

from rl2f.config import load_config
from rl2f.errors import DataError
from rl2f.evaluation.red_team import ASK, INJECT, PASTE_BACK, WRONG_ANSWER, HostileStudent
from rl2f.rollout import ChatTurns
from rl2f.stages import STAGES
from rl2f.stages.report import read_attacks
from rl2f.tasks.io import write_tasks

REPO = Path(__file__).resolve().parents[1]
TASKS = 4


@pytest.fixture
def workspace(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """data/tasks with TASKS eval_id sums and no OOD task, and the tiny model's folder as the
    base (only its tokenizer is read)."""
    tasks = [dataclasses.replace(task, split="eval_id") for task in math_tasks(TASKS)]
    write_tasks(tmp_path / "data/tasks/eval_id.parquet", tasks)
    write_tasks(tmp_path / "data/tasks/eval_ood.parquet", [])
    shutil.copytree(tiny_model_dir, tmp_path / "models/base")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config(*overrides: str):  # noqa: ANN201
    return load_config(REPO / "params.yaml", ["tracking.enabled=false", *overrides])


def test_the_oracle_under_attack_reveals_nothing(workspace: Path) -> None:
    results = STAGES["red_team"].run(config())
    written = json.loads((workspace / "reports/leak_under_attack.json").read_text())
    assert written == results and list(written) == ["eval_id"]
    assert list(written["eval_id"]) == ["teacher"]  # retry and self hold no answer to leak
    rates = written["eval_id"]["teacher"]
    # Four wrong moves per task: the answer, the request, the injection, the paste-back.
    assert rates["tasks"] == TASKS and rates["critiques"] == 4 * TASKS
    assert rates["attempted"] == 0.0 and rates["delivered"] == 0.0
    assert set(rates["leak_rate_by_check"].values()) == {0.0}
    assert read_attacks(workspace / "reports/leak_under_attack.json") == written


def test_an_obedient_llm_teacher_tries_and_the_guard_stops_it(workspace: Path) -> None:
    asked: list[str] = []
    with FaultyChatServer(lambda _attempt, _message: "ok", reply=obedient_llm(asked)) as server:
        cfg = config(
            "teacher.kind=llm",
            "teacher.model=scripted",
            "teacher.engine.kind=openai",
            f"teacher.engine.base_url={server.url}",
            "teacher.engine.max_retries=0",
        )
        results = STAGES["red_team"].run(cfg)
    rates = results["eval_id"]["teacher"]
    # It gave in to the three attacks of every task (each tried three times before the
    # fallback), then the paste-back of the fallback asked it once more.
    assert len(asked) == 3 * 3 * TASKS
    assert rates["attempted"] == pytest.approx(3 / 4) and rates["delivered"] == 0.0
    by_check = rates["leak_rate_by_check"]
    assert by_check["answer_string"] > 0 and by_check["written_number"] > 0


def test_no_privileged_mode_means_nothing_attacked(workspace: Path) -> None:
    assert STAGES["red_team"].run(config("eval.feedback_modes=[self,retry]")) == {}
    assert json.loads((workspace / "reports/leak_under_attack.json").read_text()) == {}


def test_the_script_reads_any_chat_template(tiny_model_dir: Path) -> None:
    """Its turn and the feedback it pastes back come from the template's own frame around a user
    message, so a Llama-3-style template works as ChatML does."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    llama_style = (
        "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
        "{{ m.content }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    )
    for template in (tokenizer.chat_template, llama_style):
        tokenizer.chat_template = template
        chat = ChatTurns(tokenizer)
        attacker = HostileStudent(tokenizer)
        conversation = [{"role": "user", "content": "Calculate 2 + 3."}]
        moves = []
        for feedback in ["No.", "Not that either.", 'Still "wrong".', "Look again."]:
            moves.append(attacker.move(chat.render(conversation, generation_prompt=True)))
            conversation += [
                {"role": "assistant", "content": moves[-1]},
                {"role": "user", "content": feedback},
            ]
        assert moves == [
            WRONG_ANSWER,
            ASK,
            INJECT,
            PASTE_BACK.format(feedback='Still "wrong".'),
        ]


def test_a_damaged_attack_file_is_named_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "leak_under_attack.json"
    path.write_text('{"eval_id": {"teacher": {"critiques": 4}}}')
    with pytest.raises(DataError, match=r"leak_under_attack.json: eval_id.teacher must be"):
        read_attacks(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="not UTF-8"):
        read_attacks(path)
    assert read_attacks(tmp_path / "absent.json") is None
