"""The leak guard on real tasks: every check fires on what it should, stays quiet on public
facts, and the regenerate-then-fall-back loop counts what it did."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from rl2f.config import SourceConfig
from rl2f.leakage import LeakFlags, LeakGuard, answer_tokens
from rl2f.tasks.arithmetic import arithmetic_value
from rl2f.tasks.schema import Task
from rl2f.tasks.sources import load_source
from rl2f.tasks.verifiers.base import Verdict
from rl2f.teachers.base import CritiqueRequest
from rl2f.teachers.guarded import GuardedCritique, LeakStats, guarded_critiques


def math_task(answer: str, prompt: str = "Compute the value.") -> Task:
    return Task(domain="math", source="test", prompt=prompt, answer=answer, verifier="math")


@pytest.fixture(scope="module")
def guard() -> LeakGuard:
    return LeakGuard()


@pytest.fixture(scope="module")
def sudoku() -> Task:
    return load_source(SourceConfig(kind="reasoning_gym", name="mini_sudoku", size=1, seed=3))[0]


@pytest.fixture(scope="module")
def countdown() -> Task:
    return load_source(SourceConfig(kind="reasoning_gym", name="countdown", size=1, seed=4))[0]


@pytest.fixture(scope="module")
def maze() -> Task:
    source = SourceConfig(kind="reasoning_gym", name="shortest_path", size=20, seed=5)
    # A path of several moves, so "the path" is more than one common word.
    return next(task for task in load_source(source) if len(task.answer.split()) >= 3)


@pytest.fixture(scope="module")
def code_tasks() -> list[Task]:
    return load_source(SourceConfig(kind="humaneval", name="openai_humaneval", size=20, seed=6))


# ------------------------------------------------------------------ answer string
@pytest.mark.parametrize(
    ("critique", "leaked"),
    [
        ("The answer is 12.", True),
        ("Is it (12)?", True),
        ("The answer is 123.", False),
        ("Not 112, and not 12.5 either.", False),
        ("You wrote 21.", False),
    ],
)
def test_answer_string_is_matched_as_a_whole_token(guard, critique, leaked):
    flags = guard.check(math_task("12"), critique)
    assert flags.answer_string is leaked
    assert flags.leaked is leaked


def test_negative_answers_keep_their_sign(guard):
    task = math_task("-4", prompt="State the final answer: 4 - 1 - 7 =")
    assert guard.check(task, "It is -4.").answer_string
    assert guard.check(task, "It is − 4.").answer_string  # unicode minus, spaced
    # A subtraction is not the number -4, and restating the problem is public.
    assert not guard.check(task, "Note that 7 - 4 = 3.").leaked
    assert not guard.check(task, "Recompute 4 - 1 - 7 step by step.").leaked


def test_grid_answer_leaks_in_any_layout(guard, sudoku):
    rows = [row.split() for row in sudoku.answer.splitlines()]
    as_lists = json.dumps([[int(cell) for cell in row] for row in rows])
    as_pipes = "\n".join(" | ".join(row) for row in rows)
    assert guard.check(sudoku, f"The solution is {as_lists}").answer_string
    assert guard.check(sudoku, f"Solution:\n{as_pipes}").answer_string
    quiet = guard.check(sudoku, "Row 2 repeats a number. Wrong cells: (row 1, column 2).")
    assert not quiet.leaked


def test_move_list_leaks_whatever_the_case_and_separators(guard, maze):
    shouted = ", ".join(move.upper() for move in maze.answer.split())
    assert guard.check(maze, f"Go {shouted}!").answer_string
    assert not guard.check(maze, "Move 3 runs into a blocked cell.").leaked


def test_answer_tokens_layout_and_signs():
    assert answer_tokens("2 1\n4 3") == answer_tokens("[[2, 1], [4, 3]]") == ["2", "1", "4", "3"]
    assert answer_tokens("x = -4") == ["x", "=", "-4"]
    assert answer_tokens("7 - 4") == ["7", "-", "4"]
    assert answer_tokens(r"$\frac{1}{2}$") == answer_tokens("1/2")


# ------------------------------------------------------------------ numeric equivalence
@pytest.mark.parametrize(
    ("answer", "critique"),
    [
        ("1/2", "It equals 0.5."),
        ("1/2", "That is 50% of it."),
        ("1/2", r"Write it as $\frac{2}{4}$."),
        ("1/2", r"The result is \boxed{\dfrac{1}{2}}"),
        ("0.5", "Think of it as 1/2."),
        ("12", "Try 6 * 2."),
        ("12", "It is 1,2 no: it is 12.0"),
        ("1000", "About 1,000."),
        (r"2\sqrt{3}", r"It is $\sqrt{12}$."),
        (r"2\sqrt{3}", "Numerically about 3.46."),
        (r"\frac{1}{3}", "Roughly 0.33."),
    ],
)
def test_equal_values_leak(guard, answer, critique):
    flags = guard.check(math_task(answer), critique)
    assert flags.numeric_equivalent, flags
    assert flags.evidence


@pytest.mark.parametrize(
    ("answer", "critique"),
    [
        ("1/2", "It is more than 0.4 and you are off by a lot."),
        ("12", "Your answer 13 is too high."),
        (r"2\sqrt{3}", "It is about 3.5 or so."),  # one decimal: too coarse to be a rounding
        (r"\frac{1}{3}", "Off by about 0.5."),
    ],
)
def test_other_values_do_not_leak(guard, answer, critique):
    assert not guard.check(math_task(answer), critique).leaked


# ------------------------------------------------------------------ numbers written another way
@pytest.mark.parametrize(
    ("answer", "critique"),
    [
        ("12", "The answer is twelve."),
        ("12", "It is Twelve, not thirteen."),
        ("-12", "It is minus twelve."),
        ("-12", "negative twelve"),
        ("21", "Think twenty-one."),
        ("105", "It is one hundred and five."),
        ("2024", "two thousand and twenty four"),
        ("12", "The digits are 1 2."),
        ("12", "Write 1_2."),
        ("12000", "About 12 000."),
        ("12", "In scientific notation: 1.2e1."),
        ("12", "It is 1.2E+1."),
        ("1200", "It is 1.2 x 10^3."),
        ("12", "Chapter XII."),
        ("1994", "mcmxciv"),
        ("12", "seven plus five"),
        ("12", "Try three times four."),
        ("12", "It is a sum of 10 and 2."),
        ("12", "the sum of ten and two"),
        ("12", "the difference between 2 and 14"),
        ("12", "half of 24"),
        ("12", "twice six"),
        ("12.5", "twelve and a half"),
        ("0.5", "zero point five"),
        ("3", "fifteen divided by five"),
    ],
)
def test_numbers_written_another_way_leak(guard, answer, critique):
    flags = guard.check(math_task(answer), critique)
    assert flags.written_number and flags.fired == ("written_number",), flags
    assert flags.evidence


@pytest.mark.parametrize(
    ("answer", "critique"),
    [
        ("12", "The error is less than ten."),
        ("12", "Your tens digit is wrong; the units digit is right."),
        ("12", "Your tens and hundreds digits are wrong."),
        ("1", "Take it one step at a time."),
        ("1", "One of your digits is wrong."),
        ("1", "I think you are off by one."),  # alone, one/two/three stay words
        ("2", "Check the two numbers again."),
        ("10", "X marks the spot: check the sign."),  # single letters are not numerals
        ("1009", "You mix up the terms."),
        ("5", "The error is a single-digit amount."),
        ("12", "minus twelve"),  # the opposite sign is another value
        ("12", "Your answer 1 is too small, 2 steps remain."),
        ("12", "Answer with digits only, e.g. 3 or 4."),
    ],
)
def test_ordinary_prose_is_not_a_written_number(guard, answer, critique):
    assert not guard.check(math_task(answer), critique).leaked


def test_restating_the_prompt_in_words_is_public(guard):
    task = math_task("12", prompt="What is ten plus two?")
    assert not guard.check(task, "Read it again: ten plus two.").leaked
    assert not guard.check(task, "Read it again: 10 + 2.").leaked
    assert guard.check(task, "It is twelve.").written_number


def test_oracle_critiques_pass_the_guard_on_many_generated_tasks(guard):
    """The false-positive side: the oracle's critiques on hundreds of generated problems,
    round answers (10, 100, 1000) included, almost never fall back. The figure is printed for
    the report."""
    from rl2f.tasks.verifiers import verify
    from rl2f.teachers.oracle import OracleTeacher

    source = SourceConfig(
        kind="reasoning_gym", name="basic_arithmetic", size=150, seed=11, domain="math",
        config={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 3},
    )  # fmt: skip
    tasks = load_source(source)
    tasks += [math_task(str(value), f"Compute {value} - 0.") for value in (10, 100, 1000, 12)]
    requests = []
    for task in tasks:
        answer = int(task.answer)
        for offset in (-150, -23, -10, -3, 1, 9, 11, 40, 1200):
            attempt = f"Answer: {answer + offset}"
            verdict = verify(task, attempt)
            requests.append(replace(request_for(task, attempt), verdict=verdict))
    stats = LeakStats()
    for level in ("directional", "diagnostic"):
        guarded = guarded_critiques(OracleTeacher(level), requests, guard, 2, FALLBACK)
        stats = stats + LeakStats.of(guarded)
    print(f"oracle on {len(tasks)} tasks: {stats.critiques} critiques, "
          f"leak rate {stats.leak_rate:.2%}, fallback rate {stats.fallback_rate:.2%}")  # fmt: skip
    assert stats.critiques >= 2000
    assert stats.fallback_rate < 0.01, dict(stats.by_check)


def test_symbolic_checks_work_from_worker_threads(guard):
    # math-verify's own timeouts need the main thread; the guard goes through the math
    # verifier's worker process instead, so a rollout may check critiques from any thread.
    task = math_task(r"2\sqrt{3}")
    critiques = [r"It is $\sqrt{12}$.", r"It is $\sqrt{11}$.", r"Try $2 \cdot \sqrt{3}$."]
    with ThreadPoolExecutor(max_workers=3) as pool:
        flags = list(pool.map(lambda text: guard.check(task, text), critiques))
    assert [f.numeric_equivalent for f in flags] == [True, False, True]


def test_expression_answer_value_that_the_prompt_states_is_public(guard, countdown):
    target = countdown.verifier_config["entry"]["metadata"]["target"]
    numbers = countdown.verifier_config["entry"]["metadata"]["numbers"]
    assert arithmetic_value(countdown.answer) == target
    quiet = guard.check(countdown, f"Your expression evaluates to {target + 7}, not {target}.")
    assert not quiet.leaked
    # The reference expression is the privileged part, however it is spaced ...
    flags = guard.check(countdown, f"Try {countdown.answer.replace(' ', '')}")
    assert flags.answer_string and flags.numeric_equivalent
    # ... and any other expression that reaches the target gives the puzzle away too.
    assert guard.check(countdown, f"Try {target} - 1 + 1").numeric_equivalent
    # Listing the given numbers is public.
    assert not guard.check(countdown, f"Use only {', '.join(map(str, numbers))}.").leaked


def test_arithmetic_value_is_exact_and_refuses_non_arithmetic():
    assert arithmetic_value("1/3 + 1/6") == arithmetic_value("0.5")
    assert arithmetic_value("2^10") == 1024
    assert arithmetic_value("2 1 4 3") is None
    assert arithmetic_value("__import__('os')") is None
    assert arithmetic_value("9**9**9") is None  # bounded, does not hang
    assert arithmetic_value("1/0") is None


# ------------------------------------------------------------------ code overlap
def test_pasting_the_reference_solution_is_caught(guard, code_tasks):
    for task in code_tasks:
        assert task.solution
        pasted = f"Here is a fix:\n```python\n{task.answer}```"
        flags = guard.check(task, pasted)
        assert flags.solution_overlap, task.source
        assert flags.overlap == pytest.approx(1.0)


def test_quoting_the_public_prompt_or_a_failing_test_is_not_a_leak(guard, code_tasks):
    for task in code_tasks:
        entry_point = task.verifier_config["entry_point"]
        assert not guard.check(task, task.prompt).leaked, task.source
        critique = f"{entry_point}([1, 2, 3]) should give 6, yours gives 5. 1 of 8 tests fail."
        assert not guard.check(task, critique).leaked, task.source


def test_overlap_threshold_decides(code_tasks):
    task = max(code_tasks, key=lambda t: len(t.solution.splitlines()))
    lines = task.solution.splitlines()
    first_half = "\n".join(lines[: len(lines) // 2])
    share = LeakGuard(overlap_threshold=1.0).check(task, first_half).overlap
    assert 0 < share < 1
    assert LeakGuard(overlap_threshold=share).check(task, first_half).solution_overlap
    assert (
        not LeakGuard(overlap_threshold=min(1.0, share + 0.01))
        .check(task, first_half)
        .solution_overlap
    )


def test_guard_rejects_bad_settings():
    with pytest.raises(ValueError, match="overlap_threshold"):
        LeakGuard(overlap_threshold=0)
    with pytest.raises(ValueError, match="ngram_size"):
        LeakGuard(ngram_size=1)


def test_flags_read_as_a_json_ready_mapping(guard):
    flags = guard.check(math_task("12"), "It is 12.")
    record = dict(flags)
    assert record["answer_string"] and record["numeric_equivalent"] and record["leaked"]
    assert json.loads(json.dumps(record)) == record
    assert flags.fired == ("answer_string", "numeric_equivalent")
    merged = flags | LeakFlags(solution_overlap=True, overlap=0.9)
    assert merged.fired == ("answer_string", "numeric_equivalent", "solution_overlap")


# ------------------------------------------------------------------ regenerate, then fall back
class ScriptedTeacher:
    """A privileged teacher that leaks on purpose: for each request it says
    ``lines[attempt_number]`` (the last line once they run out), formatted with the task. It
    records every batch it is asked for, so the test can see what was re-requested."""

    name = "scripted"

    def __init__(self, lines: list[str], privileged: bool = True) -> None:
        self.lines = lines
        self.privileged = privileged
        self.batches: list[list[tuple[str, int]]] = []

    def critique(self, requests: list[CritiqueRequest]) -> list[str]:
        self.batches.append([(r.task.answer, r.attempt_number) for r in requests])
        texts = []
        for request in requests:
            line = self.lines[min(request.attempt_number, len(self.lines) - 1)]
            texts.append(line.format(answer=request.task.answer, solution=request.task.solution))
        return texts


def request_for(task: Task, attempt: str = "Answer: 0") -> CritiqueRequest:
    return CritiqueRequest(
        task=task,
        conversation=[
            {"role": "user", "content": task.prompt},
            {"role": "assistant", "content": attempt},
        ],
        attempt=attempt,
        verdict=Verdict(correct=False, extracted="0", diagnostics={"expected": task.answer}),
        turn=1,
    )


FALLBACK = "That is not correct. Check your work step by step and try again."


def test_leaking_critique_is_regenerated_then_accepted(guard):
    teacher = ScriptedTeacher(["The answer is {answer}.", "Your answer is too low."])
    requests = [request_for(math_task("12")), request_for(math_task("7"))]
    guarded = guarded_critiques(
        teacher, requests, guard, max_regenerations=2, fallback_message=FALLBACK
    )
    assert [g.text for g in guarded] == ["Your answer is too low."] * 2
    assert [g.leaked_attempts for g in guarded] == [1, 1]
    assert not any(g.fell_back for g in guarded)
    assert all(g.flags.answer_string for g in guarded)  # why the first version was rejected
    # One batch for the first try, one batched regeneration with attempt_number + 1.
    assert teacher.batches == [[("12", 0), ("7", 0)], [("12", 1), ("7", 1)]]


def test_only_leaking_requests_are_requested_again(guard):
    teacher = ScriptedTeacher(["It is 0.5.", "Think again about the signs."])
    half, seven = math_task("1/2"), math_task("7")
    guarded = guarded_critiques(
        teacher, [request_for(half), request_for(seven)], guard, 2, FALLBACK
    )
    assert guarded[0] == GuardedCritique("Think again about the signs.", 1, False, guarded[0].flags)
    assert guarded[0].flags.numeric_equivalent and not guarded[0].flags.answer_string
    assert guarded[1] == GuardedCritique("It is 0.5.", 0, False, LeakFlags())
    assert teacher.batches == [[("1/2", 0), ("7", 0)], [("1/2", 1)]]


def test_persistent_leak_falls_back_after_max_regenerations(guard, code_tasks):
    task = code_tasks[0]
    teacher = ScriptedTeacher(["Paste this:\n{solution}"])
    guarded = guarded_critiques(teacher, [request_for(task)], guard, 2, FALLBACK)
    assert guarded == [GuardedCritique(FALLBACK, 3, True, guarded[0].flags, "leak")]
    assert guarded[0].flags.solution_overlap
    assert [batch[0][1] for batch in teacher.batches] == [0, 1, 2]

    no_retries = ScriptedTeacher(["The answer is {answer}."])
    guarded = guarded_critiques(no_retries, [request_for(math_task("3"))], guard, 0, FALLBACK)
    assert guarded[0].fell_back and guarded[0].leaked_attempts == 1
    assert len(no_retries.batches) == 1


def test_leak_stats_count_every_case(guard, code_tasks):
    teacher = ScriptedTeacher(["The answer is {answer}.", "Check the carry."])
    stuck = ScriptedTeacher(["{solution}"])
    first = guarded_critiques(
        teacher, [request_for(math_task("12")), request_for(math_task("5"))], guard, 2, FALLBACK
    )
    second = guarded_critiques(stuck, [request_for(code_tasks[1])], guard, 1, FALLBACK)
    clean = guarded_critiques(
        ScriptedTeacher(["Check the carry."]), [request_for(math_task("9"))], guard, 2, FALLBACK
    )

    stats = LeakStats.of(first) + LeakStats.of(second) + LeakStats.of(clean)
    assert stats.critiques == 4
    assert stats.leaked == 3
    assert stats.regenerations == 2 + 1  # two accepted on retry, one retry before falling back
    assert stats.fell_back == 1
    assert dict(stats.by_check) == {
        "answer_string": 2,
        "numeric_equivalent": 2,
        "written_number": 0,
        "solution_overlap": 1,
        "llm_judge": 0,
    }
    assert stats.leak_rate == pytest.approx(0.75)
    metrics = stats.as_metrics()
    assert metrics["leak/rate"] == pytest.approx(0.75)
    assert metrics["leak/fallback_rate"] == pytest.approx(0.25)
    assert LeakStats().leak_rate == 0.0


def test_unprivileged_teachers_are_not_checked(guard):
    # A self-critique is the student's own text; the answer in it was not given by a teacher.
    teacher = ScriptedTeacher(["I think it is {answer}."], privileged=False)
    guarded = guarded_critiques(teacher, [request_for(math_task("12"))], guard, 2, FALLBACK)
    assert guarded == [GuardedCritique("I think it is 12.", 0, False, LeakFlags())]


def test_a_teacher_returning_the_wrong_number_of_critiques_is_an_error(guard):
    class Short(ScriptedTeacher):
        def critique(self, requests):
            return super().critique(requests)[:-1]

    with pytest.raises(RuntimeError, match="1 critiques for 2 requests"):
        guarded_critiques(
            Short(["Fine."]),
            [request_for(math_task("1")), request_for(math_task("2"))],
            guard,
            1,
            FALLBACK,
        )
    assert guarded_critiques(Short(["x"]), [], guard, 1, FALLBACK) == []


# ------------------------------------------------------------------ the optional LLM judge
def judge_reply(messages: list[dict[str, str]]) -> str:
    """A judge model on a real HTTP server: it sees through a hint that spells out how to get
    the secret answer (what string matching cannot), and rambles about one critique."""
    prompt = messages[-1]["content"]
    secret = re.search(r"Secret answer: (.*)", prompt).group(1)
    critique = prompt.split("Critique:\n", 1)[1].split("\n\nReply with", 1)[0]
    if "ramble" in critique:
        return "Well, it depends on how you look at it."
    return "YES" if "add your two numbers" in critique and secret else "NO."


def test_llm_judge_catches_what_strings_miss_over_a_real_server():
    from servers import scripted_chat_engine

    from rl2f.leakage import LeakJudge

    task = math_task("12", "Compute 7 + 5.")
    critiques = [
        "Just add your two numbers and write that.",  # only the judge sees it
        "The answer is 12.",  # strings catch it; the judge is not asked
        "Check the carry.",  # clean
        "I ramble about carries.",  # an unreadable verdict passes, and is counted
    ]
    with scripted_chat_engine(judge_reply) as engine:
        judge = LeakJudge(engine)
        guard = LeakGuard(judge=judge)
        flags = guard.check_many([(task, text) for text in critiques])
        assert [f.fired for f in flags] == [
            ("llm_judge",),
            ("answer_string", "numeric_equivalent"),
            (),
            (),
        ]
        assert flags[0].evidence == ("llm judge",)
        assert (judge.asked, judge.revealed, judge.unreadable) == (3, 1, 1)
        # In the loop: the judge's rejection is regenerated and counted under its own check.
        teacher = ScriptedTeacher(["Just add your two numbers.", "Check the carry."])
        guarded = guarded_critiques(teacher, [request_for(task)], guard, 2, FALLBACK)
    assert guarded[0].text == "Check the carry." and guarded[0].leaked_attempts == 1
    assert dict(LeakStats.of(guarded).by_check)["llm_judge"] == 1
    assert not LeakGuard().check(task, critiques[0]).leaked  # without a judge it passes


def test_llm_judge_runs_on_a_real_small_model(tiny_model_dir):
    """The judge works with any engine; the untrained tiny model's verdicts are noise, so only
    the bookkeeping is checked: every critique asked once, in one batch."""
    from rl2f.config import EngineConfig
    from rl2f.engines import make_engine
    from rl2f.leakage import LeakJudge

    engine = make_engine(EngineConfig(kind="transformers", device="cpu"), str(tiny_model_dir))
    try:
        judge = LeakJudge(engine)
        task = math_task("12")
        verdicts = judge.judge([(task, "Check the carry."), (task, "Look at the sign.")])
    finally:
        engine.close()
    assert len(verdicts) == 2 and all(isinstance(v, bool) for v in verdicts)
    assert judge.asked == 2 and judge.revealed + judge.unreadable <= 2


def test_teacher_judge_model_puts_the_judge_into_every_rollouts_guard():
    """``teacher.judge_model`` (served over HTTP here) reaches the guard RolloutSettings builds
    for training, the rollout stage and the evaluation; closing the settings closes the judge's
    engine, and without a judge_model the guard has string checks only."""
    from servers import FaultyChatServer

    from rl2f.config import Config, DataConfig, EngineConfig, SourceConfig, TeacherConfig
    from rl2f.errors import UserError
    from rl2f.rollout import RolloutSettings

    data = DataConfig(sources=[SourceConfig(kind="reasoning_gym", name="basic_arithmetic")])

    task = math_task("12", "Compute 7 + 5.")
    with FaultyChatServer(lambda _a, _m: "ok", reply=judge_reply) as server:
        engine = EngineConfig(kind="openai", base_url=server.url, max_retries=0)
        teacher = TeacherConfig(judge_model="judge", judge_engine=engine)
        settings = RolloutSettings.from_config(
            Config(data=data, teacher=teacher), num_generations=1, max_turns=2
        )
        try:
            flags = settings.guard.check(task, "Just add your two numbers and write that.")
            assert flags.fired == ("llm_judge",)
        finally:
            settings.close()
        with pytest.raises(UserError, match="used after close"):
            settings.guard.judge.engine.chat([[{"role": "user", "content": "hi"}]], None)
    plain = RolloutSettings.from_config(Config(data=data), num_generations=1, max_turns=2)
    assert plain.guard.judge is None
