"""Teachers on real tasks: real generators, real verifiers (their diagnostics are what the
oracle reads), the real leak guard, and the tiny model behind the LLM and self teachers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rl2f.config import EngineConfig, SamplingConfig, SourceConfig, TeacherConfig
from rl2f.engines import make_engine
from rl2f.engines.base import ChatEngine
from rl2f.errors import UserError
from rl2f.leakage import LeakGuard, answer_tokens
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import load_source
from rl2f.tasks.verifiers import Verdict, verify
from rl2f.tasks.verifiers.maze import MOVES, Grid
from rl2f.teachers import (
    LLMTeacher,
    OracleTeacher,
    PublicView,
    RetryTeacher,
    SelfCritic,
    make_teacher,
)
from rl2f.teachers.base import CritiqueRequest
from rl2f.teachers.guarded import LeakStats, guarded_critiques
from rl2f.teachers.llm import clean_critique
from rl2f.teachers.oracle import (
    MIN_CONSISTENT_ANSWERS,
    PHRASES,
    Failure,
    Voice,
    integer_hints,
    math_critique,
)
from rl2f.teachers.self_critic import self_critique_conversation, self_critique_messages

LEVELS = ("binary", "directional", "diagnostic")
GUARD = LeakGuard()


def phrased(key: str, text: str) -> bool:
    """True when ``text`` contains one of the phrasings of message ``key`` (fields as wildcards)."""
    for option in PHRASES[key]:
        pattern = re.escape(option)
        pattern = re.sub(r"\\\{\w+\\\}", ".+?", pattern)
        if re.search(pattern, text):
            return True
    return False


# ------------------------------------------------------------------ real tasks, wrong answers
def rg_tasks(name: str, size: int, seed: int, domain: str | None = None, **config) -> list[Task]:
    source = SourceConfig(
        kind="reasoning_gym", name=name, size=size, seed=seed, domain=domain, config=config
    )
    return load_source(source)


@pytest.fixture(scope="module")
def math_tasks() -> list[Task]:
    arithmetic = rg_tasks(
        "basic_arithmetic", 40, 1, "math",
        min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=["+", "-"],
    )  # fmt: skip
    chains = rg_tasks(
        "chain_sum", 20, 2, "math", min_terms=3, max_terms=3, min_digits=1, max_digits=1
    )
    return arithmetic + chains


@pytest.fixture(scope="module")
def sudoku_tasks() -> list[Task]:
    return rg_tasks("mini_sudoku", 20, 3)


@pytest.fixture(scope="module")
def countdown_tasks() -> list[Task]:
    return rg_tasks("countdown", 20, 4)


@pytest.fixture(scope="module")
def maze_tasks() -> list[Task]:
    return [task for task in rg_tasks("shortest_path", 30, 5) if task.answer != "infeasible"]


@pytest.fixture(scope="module")
def code_tasks() -> list[Task]:
    return humaneval(2)


def humaneval(size: int) -> list[Task]:
    # Every code verification is a sandboxed subprocess (about half a second): keep them few.
    return load_source(SourceConfig(kind="humaneval", name="openai_humaneval", size=size, seed=6))


def math_responses(task: Task) -> dict[str, str]:
    answer = int(task.answer)
    offsets = (-150, -23, -10, -3, -1, 1, 2, 9, 11, 40, 1200)
    wrong = {f"off by {offset}": f"Answer: {answer + offset}" for offset in offsets}
    if answer:
        wrong["sign"] = f"Answer: {-answer}"
    return wrong


def sudoku_responses(task: Task) -> dict[str, str]:
    metadata = task.verifier_config["entry"]["metadata"]
    puzzle, solution = metadata["puzzle"], metadata["solution"]
    free = [(r, c) for r in range(4) for c in range(4) if not puzzle[r][c]]
    given = [(r, c) for r in range(4) for c in range(4) if puzzle[r][c]]
    r, c = next((r, c) for r, c in free if sum(row == r for row, _ in free) >= 2)
    other = next(col for row, col in free if row == r and col != c)
    gr, gc = given[0]

    def edited(*cells: tuple[int, int, object], sep: str = " ") -> str:
        grid: list[list[object]] = [list(row) for row in solution]
        for row, col, value in cells:
            grid[row][col] = value
        return "\n".join(sep.join(str(cell) for cell in line) for line in grid)

    return {
        "swap": edited((r, c, solution[r][other]), (r, other, solution[r][c])),
        "one wrong": edited((r, c, solution[r][c] % 4 + 1)),
        "changed given": edited((gr, gc, solution[gr][gc] % 4 + 1)),
        "empty": edited((r, c, "_")),
        "malformed": edited((r, c, solution[r][c] % 4 + 1), sep=","),
    }


def countdown_responses(task: Task) -> dict[str, str]:
    metadata = task.verifier_config["entry"]["metadata"]
    numbers = metadata["numbers"]
    extra = next(n for n in range(2, 100) if n not in numbers)
    return {
        "unused": " + ".join(str(n) for n in numbers[:-1]),
        "not given": f"{task.answer} + {extra}",
        "wrong value": " * ".join(str(n) for n in numbers),
        "equation": f"{task.answer} = {metadata['target']}",
        "garbage": "no idea",
    }


BACK = {"up": "down", "down": "up", "left": "right", "right": "left"}


def maze_responses(task: Task) -> dict[str, str]:
    grid = Grid.from_matrix(task.verifier_config["entry"]["metadata"]["matrix"], "test")
    moves = task.answer.split()
    responses = {
        "short": " ".join(moves[:-1]) or BACK[moves[0]],
        "infeasible": "infeasible",
        "unknown move": "north " + task.answer,
    }
    for name, (dr, dc) in MOVES.items():
        there = (grid.start[0] + dr, grid.start[1] + dc)
        if not grid.inside(there) or grid.blocked(there):
            responses["wall"] = name
            break
    for name, (dr, dc) in MOVES.items():
        there = (grid.goal[0] + dr, grid.goal[1] + dc)
        if grid.inside(there) and not grid.blocked(there):
            responses["detour"] = f"{task.answer} {name} {BACK[name]}"
            break
    return responses


def code_responses(task: Task) -> dict[str, str]:
    signature = task.answer[: len(task.answer) - len(task.solution)]
    return {
        "wrong": f"```python\n{signature}    return None\n```",
        "syntax": f"```python\n{signature}    return (\n```",
        "crash": f"```python\n{signature}    raise ValueError('not done')\n```",
        "no code": "I do not know how to do this.",
    }


_VERDICTS: dict[tuple[str, str], CritiqueRequest | None] = {}


def failed_request(task: Task, response: str, turn: int = 1) -> CritiqueRequest | None:
    """The request a rollout would send after ``response``; None if the response is right.
    Verdicts are cached: code verification runs a sandbox, and tests reuse the same attempts."""
    key = (task.id, response)
    if key not in _VERDICTS:
        verdict = verify(task, response)
        conversation = [
            {"role": "user", "content": task.prompt},
            {"role": "assistant", "content": response},
        ]
        request = CritiqueRequest(task, conversation, response, verdict, turn=1)
        _VERDICTS[key] = None if verdict.correct else request
    request = _VERDICTS[key]
    return None if request is None else replace(request, turn=turn)


def requests_for(tasks: list[Task], responses) -> list[CritiqueRequest]:
    requests = []
    for index, task in enumerate(tasks):
        for response in responses(task).values():
            request = failed_request(task, response, turn=1 + index % 3)
            if request is not None:
                requests.append(request)
    return requests


RESPONSES = {
    "math": math_responses,
    "sudoku": sudoku_responses,
    "countdown": countdown_responses,
    "maze": maze_responses,
    "code": code_responses,
}


@pytest.fixture(scope="module", params=list(RESPONSES))
def domain_requests(request: pytest.FixtureRequest) -> list[CritiqueRequest]:
    """Every wrong attempt at every task of one domain, verified by the real verifier."""
    tasks = request.getfixturevalue(f"{request.param}_tasks")
    return requests_for(tasks, RESPONSES[request.param])


def critique(level: str, request: CritiqueRequest) -> str:
    return OracleTeacher(level).critique([request])[0]


def one(tasks: list[Task], response: str, index: int = 0) -> CritiqueRequest:
    request = failed_request(tasks[index], response)
    assert request is not None, response
    return request


# ------------------------------------------------------------------ the zero-leak sweep
def test_oracle_critiques_never_leak_at_any_level(domain_requests):
    assert len(domain_requests) >= 8
    assert_no_leaks(domain_requests)


@pytest.mark.slow
def test_oracle_code_critiques_never_leak_on_many_problems():
    assert_no_leaks(requests_for(humaneval(12), code_responses))


def assert_no_leaks(everything: list[CritiqueRequest]) -> None:
    for level in LEVELS:
        teacher = OracleTeacher(level)
        guarded = guarded_critiques(teacher, everything, GUARD, 2, "fallback")
        stats = LeakStats.of(guarded)
        leaks = [
            (r.task.answer, g.flags.evidence)
            for r, g in zip(everything, guarded, strict=True)
            if g.leaked_attempts
        ]
        assert stats.leaked == 0 and stats.fell_back == 0, (level, leaks[:5])
        assert all(g.text and g.text != "fallback" for g in guarded)


def test_binary_level_only_says_wrong(domain_requests):
    for request in domain_requests[:10]:
        assert critique("binary", request) in PHRASES["incorrect"]


def test_no_phrasing_uses_a_word_that_can_be_a_maze_answer():
    # A one-move maze's answer is a single direction word; the guard flags any occurrence.
    maze_words = {"up", "down", "left", "right", "infeasible"}
    for key, options in PHRASES.items():
        for option in options:
            assert not maze_words & set(answer_tokens(option)), (key, option)


def test_critiques_are_deterministic_and_vary_across_tasks_and_attempts(math_tasks):
    requests = requests_for(math_tasks, math_responses)
    teacher = OracleTeacher("directional")
    assert teacher.critique(requests) == teacher.critique(requests)
    assert len(set(teacher.critique(requests))) >= 4
    # A regeneration (attempt_number + 1) may read differently: over many requests some do.
    again = [replace(r, attempt_number=1) for r in requests]
    assert teacher.critique(again) != teacher.critique(requests)


# ------------------------------------------------------------------ math
def test_math_direction_and_size(math_tasks):
    task = math_tasks[0]
    answer = int(task.answer)
    high = one(math_tasks, f"Answer: {answer + 23}")
    low = one(math_tasks, f"Answer: {answer - 4}")
    assert phrased("too_high", critique("directional", high))
    assert phrased("too_low", critique("directional", low))
    assert critique("directional", high) in PHRASES["too_high"]  # direction only

    diagnostic = critique("diagnostic", high)
    assert phrased("too_high", diagnostic) and "a two-digit amount" in diagnostic
    assert "a single-digit amount" in critique("diagnostic", low)
    # Sizes are words: a math critique holds no number at all, so it cannot hold the answer.
    assert not re.search(r"\d", diagnostic)


def test_math_missing_answer_gets_the_format(math_tasks):
    request = one(math_tasks, r"I would put it in a box: \boxed{}")
    assert request.verdict.diagnostics["got"] is None
    for level in ("directional", "diagnostic"):
        text = critique(level, request)
        assert phrased("format_number", text) and "'Answer:'" in text


@pytest.mark.slow  # prose goes to the math-verify worker, which takes seconds to start
def test_math_prose_answer_is_asked_for_a_number(math_tasks):
    request = one(math_tasks, "Let me think about it.")
    assert phrased("not_a_number", critique("diagnostic", request))
    fraction = one(math_tasks, "Answer: 1/3")
    assert phrased("too_high", critique("directional", fraction)) or phrased(
        "too_low", critique("directional", fraction)
    )


def test_math_digit_and_sign_hints(math_tasks):
    task = next(t for t in math_tasks if 20 <= int(t.answer) <= 80)
    answer = int(task.answer)
    tens_off = one([task], f"Answer: {answer + 10}")
    assert "tens digit" in critique("diagnostic", tens_off)
    negative = next(t for t in math_tasks if int(t.answer) < -3)
    flipped = one([negative], f"Answer: {-int(negative.answer)}")
    assert phrased("wrong_sign", critique("diagnostic", flipped))


def test_math_hints_never_pin_the_answer_down(math_tasks):
    """Read with the student's own number, a critique must fit at least MIN_CONSISTENT_ANSWERS
    answers: for every wrong attempt, count the possible answers that give the same critique
    (direction, band, and the sign and digit hints)."""
    for task in math_tasks[:12] + math_tasks[-4:]:
        voice = Voice(task.id)
        for response in math_responses(task).values():
            got = int(response.removeprefix("Answer: "))

            def said_if_answer_were(x: int, got: int = got, voice: Voice = voice) -> tuple:
                return got > x, tuple(integer_hints(got, x, voice))

            said = said_if_answer_were(int(task.answer))
            consistent = 0
            for distance in range(1, 2500):
                for x in (got - distance, got + distance):
                    consistent += said_if_answer_were(x) == said
                if consistent >= MIN_CONSISTENT_ANSWERS:
                    break
            assert consistent >= MIN_CONSISTENT_ANSWERS, (task.answer, got, said)


def test_math_diagnostic_critique_is_direction_then_hints(math_tasks):
    task = math_tasks[0]
    got = int(task.answer) + 23
    diagnostics = {"expected": task.answer, "got": str(got), "parse_error": False,
                   "numeric_error": 23.0, "timeout": False}  # fmt: skip
    voice = Voice("fixed")
    sentences = math_critique(Failure(task, f"Answer: {got}", diagnostics), "diagnostic", voice)
    assert sentences == [voice.say("too_high"), *integer_hints(got, int(task.answer), voice)]


# ------------------------------------------------------------------ puzzles
def test_sudoku_critiques_name_rules_and_cells(sudoku_tasks):
    responses = sudoku_responses(sudoku_tasks[0])
    swap, one_wrong, changed = responses["swap"], responses["one wrong"], responses["changed given"]
    empty, malformed = responses["empty"], responses["malformed"]
    directional = critique("directional", one(sudoku_tasks, swap))
    assert phrased("unit_breaks_rule", directional)
    assert re.search(r"[Cc]olumn \d|box", directional)  # a row swap breaks columns or boxes

    diagnostic = critique("diagnostic", one(sudoku_tasks, one_wrong))
    assert phrased("unit_repeats", diagnostic) and phrased("wrong_cells_at", diagnostic)
    assert "(row " in diagnostic

    assert phrased("changed_given", critique("directional", one(sudoku_tasks, changed)))
    assert phrased("changed_given_cells", critique("diagnostic", one(sudoku_tasks, changed)))
    assert phrased("empty_cells_at", critique("diagnostic", one(sudoku_tasks, empty)))
    assert phrased("format_grid", critique("directional", one(sudoku_tasks, malformed)))


def test_countdown_critiques(countdown_tasks):
    task = countdown_tasks[0]
    metadata = task.verifier_config["entry"]["metadata"]
    responses = countdown_responses(task)
    unused, not_given, wrong_value = (
        responses["unused"],
        responses["not given"],
        responses["wrong value"],
    )
    equation, garbage = responses["equation"], responses["garbage"]

    text = critique("diagnostic", one([task], unused))
    assert phrased("unused_list", text) and str(metadata["numbers"][-1]) in text
    assert phrased("value_is", text) and str(metadata["target"]) in text

    assert phrased("numbers_not_allowed_list", critique("diagnostic", one([task], not_given)))
    assert phrased("numbers_not_allowed", critique("directional", one([task], not_given)))
    direction = critique("directional", one([task], wrong_value))
    assert phrased("value_above", direction) or phrased("value_below", direction)
    for response in (equation, garbage):
        assert phrased("format_expression", critique("directional", one([task], response)))
    assert "'='" in critique("diagnostic", one([task], equation))


def test_other_reasoning_gym_generators_get_generic_feedback():
    task = rg_tasks("letter_counting", 1, 0)[0]
    request = one([task], f"Answer: {int(task.answer) + 5}")
    assert phrased("too_high", critique("directional", request))
    words = rg_tasks("spell_backward", 1, 0)[0]
    assert critique("diagnostic", one([words], "Answer: zzz")).startswith(
        PHRASES["incorrect"] + PHRASES["partly_right"]
    )


# ------------------------------------------------------------------ maze
def test_maze_critiques(maze_tasks):
    task = next(t for t in maze_tasks if {"wall", "detour"} <= maze_responses(t).keys())
    responses = maze_responses(task)
    assert phrased("misses_goal", critique("directional", one([task], responses["short"])))
    assert phrased("stops_at", critique("diagnostic", one([task], responses["short"])))
    assert phrased("path_exists", critique("diagnostic", one([task], responses["infeasible"])))
    assert phrased("format_moves", critique("directional", one([task], responses["unknown move"])))

    into_wall = one([task], responses["wall"])
    assert into_wall.verdict.diagnostics["first_invalid_move"] == 0
    assert critique("directional", into_wall) in PHRASES["hits_wall"] + PHRASES["leaves_grid"]
    text = critique("diagnostic", into_wall)
    assert phrased("move_hits_wall", text) or phrased("move_leaves_grid", text)
    assert re.search(r"\b1\b", text)  # the first move, counted from one

    detour = one([task], responses["detour"])
    assert phrased("not_shortest", critique("directional", detour))
    lengths = critique("diagnostic", detour)
    assert phrased("lengths", lengths) and str(len(task.answer.split())) in lengths


# ------------------------------------------------------------------ code
def test_code_critiques(code_tasks):
    task = code_tasks[0]
    responses = code_responses(task)
    wrong, syntax, crash, no_code = (responses[k] for k in ("wrong", "syntax", "crash", "no code"))
    text = critique("diagnostic", one([task], wrong))
    assert phrased("wrong_output", text) or phrased("runtime_error", text)
    assert task.verifier_config["entry_point"] in text  # the failing call is quoted
    assert phrased("failing_test", text) or phrased("failing_test_error", text)
    assert (
        critique("directional", one([task], wrong)).count(task.verifier_config["entry_point"]) == 0
    )

    assert phrased("syntax_error", critique("directional", one([task], syntax)))
    crash_text = critique("diagnostic", one([task], crash))
    assert phrased("runtime_error", crash_text) and "ValueError" in crash_text
    assert phrased("format_code", critique("directional", one([task], no_code)))


# ------------------------------------------------------------------ retry, factory
def test_retry_teacher_repeats_its_message(math_tasks):
    request = one(math_tasks, "Answer: 1000")
    teacher = make_teacher(TeacherConfig(kind="retry", retry_message="Once more."))
    assert isinstance(teacher, RetryTeacher) and not teacher.privileged
    assert teacher.critique([request, request]) == ["Once more.", "Once more."]
    with pytest.raises(ValueError, match="retry_message"):
        RetryTeacher("  ")


def test_make_teacher_builds_each_kind_and_explains_what_is_missing():
    oracle = make_teacher(TeacherConfig(kind="oracle", level="binary"))
    assert isinstance(oracle, OracleTeacher) and oracle.level == "binary" and oracle.privileged
    with pytest.raises(UserError, match="student's engine"):
        make_teacher(TeacherConfig(kind="self"))
    with pytest.raises(UserError, match="teacher.model"):
        make_teacher(TeacherConfig(kind="llm"))
    with pytest.raises(ValueError, match="level"):
        OracleTeacher("vague")  # type: ignore[arg-type]


# ------------------------------------------------------------------ llm and self, on the tiny model
SHORT = SamplingConfig(temperature=1.0, max_new_tokens=6, seed=3)
# Short prompts keep the tiny model on CPU fast; the default prompts are checked on their own.
BRIEF = {
    "sampling": SHORT,
    "system_prompt": "Never state the answer.",
    "prompt_template": "{prompt} Secret: {answer}. {solution_block}{diagnostics} {attempt}",
    "self_prompt_template": "{attempt} is wrong. Why?",
}


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir: Path) -> Iterator[ChatEngine]:
    engine = make_engine(
        EngineConfig(kind="transformers", device="cpu", batch_size=8), str(tiny_model_dir)
    )
    yield engine
    engine.close()


class RecordingEngine:
    """The real tiny engine, keeping every conversation it is asked to continue."""

    def __init__(self, engine: ChatEngine) -> None:
        self.engine = engine
        self.conversations: list[list[dict[str, str]]] = []
        self.calls = 0

    def chat(self, conversations, sampling):
        self.calls += 1
        self.conversations += conversations
        return self.engine.chat(conversations, sampling)

    def close(self) -> None:
        self.engine.close()


def test_llm_teacher_prompt_holds_the_privileged_facts(math_tasks, code_tasks, tiny_engine):
    teacher = LLMTeacher(tiny_engine, TeacherConfig(kind="llm", sampling=SHORT))
    request = one(math_tasks, "Answer: 1000")
    system, user = teacher.conversation(request)
    assert system["role"] == "system" and "never state it" in system["content"]
    assert f"Correct answer (secret, never reveal it): {request.task.answer}" in user["content"]
    assert json.dumps(request.verdict.diagnostics["got"]) in user["content"]
    assert "Answer: 1000" in user["content"] and "Reference solution" not in user["content"]
    code = one(code_tasks, code_responses(code_tasks[0])["wrong"])
    assert f"Reference solution:\n{code.task.solution}" in teacher.conversation(code)[1]["content"]
    retried = replace(request, attempt_number=1)
    assert "revealed the answer" in teacher.conversation(retried)[1]["content"]


def test_llm_teacher_critiques_in_one_batch_through_the_guard(math_tasks, tiny_engine):
    cfg = TeacherConfig(kind="llm", **BRIEF)
    recorder = RecordingEngine(tiny_engine)
    teacher = make_teacher(cfg, engine=recorder)
    assert isinstance(teacher, LLMTeacher) and teacher.privileged
    requests = [one(math_tasks, "Answer: 1000", index) for index in range(5)]
    texts = teacher.critique(requests)
    assert recorder.calls == 1 and len(recorder.conversations) == 5
    assert len(texts) == 5 and all(isinstance(t, str) and t.strip() for t in texts)
    assert all(len(t) <= teacher.max_chars for t in texts)
    # Regenerations are sampled with another seed, in one call per attempt number.
    mixed = [replace(requests[0], attempt_number=1), *requests[1:3]]
    assert len(teacher.critique(mixed)) == 3 and recorder.calls == 3

    guarded = guarded_critiques(
        teacher, requests, GUARD, cfg.max_regenerations, cfg.fallback_message
    )
    assert len(guarded) == 5
    for request, item in zip(requests, guarded, strict=True):
        # What the student is shown, fallback included, never holds the answer.
        assert not GUARD.check(request.task, item.text).leaked, item


def obedient_teacher_reply(messages: list[dict[str, str]]) -> str:
    """A teacher model on a real HTTP server that states the secret answer, in another form
    each time it is asked again, and gives up leaking after one regeneration, except for the
    attempt "Answer: 1000", where it never does."""
    user = messages[-1]["content"]
    secret = int(re.search(r"never reveal it\): (.*)", user).group(1))
    regenerated = "revealed the answer" in user
    if "Answer: 1000" in user:
        return f"It is {secret} + 0." if regenerated else f"The answer is {secret}."
    return "Check the carry." if regenerated else f"It is {secret + 1} - 1."


def test_llm_teacher_leaks_are_regenerated_or_fall_back_over_a_real_server(math_tasks):
    from servers import scripted_chat_engine

    cfg = TeacherConfig(kind="llm", max_regenerations=2)
    requests = [one(math_tasks, "Answer: 1000"), one(math_tasks, "Answer: 999", 1)]
    with scripted_chat_engine(obedient_teacher_reply) as engine:
        guarded = guarded_critiques(
            LLMTeacher(engine, cfg), requests, GUARD, cfg.max_regenerations, cfg.fallback_message
        )
    stubborn, fixed = guarded
    assert stubborn.fell_back and stubborn.fallback_reason == "leak"
    assert stubborn.text == cfg.fallback_message and stubborn.leaked_attempts == 3
    assert not fixed.fell_back and fixed.text == "Check the carry." and fixed.leaked_attempts == 1
    stats = LeakStats.of(guarded)
    assert (stats.leaked, stats.regenerations, stats.fell_back, stats.empty) == (2, 3, 1, 0)
    assert dict(stats.by_check)["numeric_equivalent"] == 2
    for request, item in zip(requests, guarded, strict=True):
        assert not GUARD.check(request.task, item.text).leaked


def test_empty_llm_and_self_critiques_are_counted_fallbacks(math_tasks):
    from servers import scripted_chat_engine

    request = one(math_tasks, "Answer: 1000")
    # "Critique:" alone is empty once cleaned.
    with scripted_chat_engine(lambda _messages: "Critique:   ") as engine:
        teachers = [
            LLMTeacher(engine, TeacherConfig(kind="llm")),
            SelfCritic(engine, TeacherConfig(kind="self")),
        ]
        for teacher in teachers:
            assert teacher.critique([request]) == [""]  # the teacher no longer hides it
            guarded = guarded_critiques(teacher, [request], GUARD, 2, "fallback")
            assert guarded[0].text == "fallback" and guarded[0].fell_back, teacher.name
            assert guarded[0].fallback_reason == "empty"
            stats = LeakStats.of(guarded)
            assert (stats.fell_back, stats.empty, stats.leaked, stats.regenerations) == (1, 1, 0, 0)


def test_an_empty_regeneration_after_a_leak_is_a_leak_fallback(math_tasks):
    from servers import scripted_chat_engine

    def reply(messages: list[dict[str, str]]) -> str:
        user = messages[-1]["content"]
        secret = re.search(r"never reveal it\): (.*)", user).group(1)
        return "" if "revealed the answer" in user else f"The answer is {secret}."

    request = one(math_tasks, "Answer: 1000")
    with scripted_chat_engine(reply) as engine:
        guarded = guarded_critiques(
            LLMTeacher(engine, TeacherConfig(kind="llm")), [request], GUARD, 2, "fallback"
        )
    assert guarded[0].fell_back and guarded[0].fallback_reason == "leak"
    stats = LeakStats.of(guarded)
    # One leak, one regeneration that came back empty (rejected too), then the fallback.
    assert (stats.leaked, stats.regenerations, stats.fell_back, stats.empty) == (1, 1, 1, 0)


def test_clean_critique_strips_labels_and_cuts_at_a_sentence():
    assert clean_critique("  Critique: Check the carry.  ") == "Check the carry."
    long = "Check the carry. " * 10 + "x" * 50
    cut = clean_critique(long, max_chars=60)
    assert cut.endswith("carry.") and len(cut) <= 60
    assert clean_critique("word " * 40, max_chars=23) == "word word word word"


def test_llm_teacher_builds_its_own_engine_from_config(math_tasks, tiny_model_dir):
    cfg = TeacherConfig(
        kind="llm", model=str(tiny_model_dir), engine=EngineConfig(device="cpu"), **BRIEF
    )
    teacher = make_teacher(cfg)
    try:
        assert len(teacher.critique([one(math_tasks, "Answer: 1000")])) == 1
    finally:
        teacher.close()


class ClosableEngine:
    """Stands in for an engine only to see who closes it."""

    closed = False

    def chat(self, conversations, sampling):
        return ["Check the carry." for _ in conversations]

    def close(self) -> None:
        self.closed = True


def test_teachers_close_only_what_they_own(tiny_model_dir):
    lent = ClosableEngine()
    for teacher in (
        make_teacher(TeacherConfig(kind="llm"), engine=lent),
        make_teacher(TeacherConfig(kind="self"), engine=lent),  # the student's engine
        make_teacher(TeacherConfig(kind="oracle")),
        make_teacher(TeacherConfig(kind="retry")),
    ):
        teacher.close()
    assert not lent.closed
    cfg = TeacherConfig(kind="llm", model=str(tiny_model_dir), engine=EngineConfig(device="cpu"))
    built = make_teacher(cfg)
    assert isinstance(built, LLMTeacher) and built.owns_engine
    real, built.engine = built.engine, ClosableEngine()
    real.close()
    built.close()
    assert built.engine.closed


def test_llm_teacher_rejects_unknown_template_fields(tiny_engine):
    cfg = TeacherConfig(kind="llm", prompt_template="{prompt} {secret}")
    with pytest.raises(UserError, match=r"teacher.prompt_template: unknown field \{secret\}"):
        LLMTeacher(tiny_engine, cfg)


def test_self_critic_sees_only_the_public_view(math_tasks, tiny_engine):
    secret = "SECRET-7f3a"
    real = one(math_tasks, "Answer: 99")
    task = replace(real.task, answer=secret, solution=secret, metadata={"note": secret},
                   verifier_config={"entry": {"answer": secret}})  # fmt: skip
    verdict = Verdict(False, "99", {"expected": secret, "numeric_error": 1.0})
    request = replace(real, task=task, verdict=verdict)

    view = PublicView.of(request)
    assert view.conversation == tuple(request.conversation)
    template = TeacherConfig().self_prompt_template  # the default, as distillation uses it
    conversation = self_critique_conversation(view, template)
    # The format critique distillation trains on, with the critique request appended.
    assert conversation == self_critique_messages(list(request.conversation), template)
    assert conversation[-1]["content"] == template.format(prompt=task.prompt, attempt="Answer: 99")

    recorder = RecordingEngine(tiny_engine)
    teacher = make_teacher(TeacherConfig(kind="self", **BRIEF), engine=recorder)
    assert isinstance(teacher, SelfCritic) and not teacher.privileged
    texts = teacher.critique([request, request])
    assert len(texts) == 2 and all(t.strip() for t in texts)
    assert len(recorder.conversations) == 2
    assert secret not in json.dumps(recorder.conversations)

    with pytest.raises(UserError, match="self_prompt_template"):
        SelfCritic(tiny_engine, TeacherConfig(kind="self", self_prompt_template="{answer}"))


def test_self_critic_fills_in_a_bare_request(math_tasks):
    real = one(math_tasks, "Answer: 99")
    bare = replace(real, conversation=[])
    assert PublicView.of(bare).conversation == (
        {"role": "user", "content": real.task.prompt},
        {"role": "assistant", "content": "Answer: 99"},
    )
