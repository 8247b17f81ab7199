"""The supervised corpus that warm-starts the tiny student: chat conversations built from
train-split tasks, with a short worked solution and the ``Answer:`` line as every reply.

What the corpus must NOT teach matters as much as what it does. Like a model trained on static
corpora, the base model should not yet know how to use feedback: no user turn ever says what
was wrong with a reply, and every reply the loss covers is a correct answer. What it must teach
is what a pretrained chat model brings to a conversation: the multi-turn format (several
independent questions, often introduced by a little small talk) and the habit of trying again.
Now and then a reply is a near miss (the worked solution with its result off by a little; shown
in context but excluded from the loss, so the model never learns to make the mistake), the user
answers with a bare nudge that carries no information ("No. Try again."), and the correct reply
follows. So a user turn the model has never seen, such as a teacher's critique, is met with a
fresh, well-formed attempt at the problem under discussion rather than with nonsense, and
multi-turn RL gets reward at later turns to learn from; what the critique *says* is left for RL
to teach.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

from rl2f.engines.base import Message
from rl2f.tasks.arithmetic import evaluate_with_steps, number_text
from rl2f.tasks.python_ast import parse_python
from rl2f.tasks.schema import Task

# Small talk that may precede a later question. Plain conversational openers, none of which
# comments on the previous answer: the model learns to skip such text and answer the question.
LEAD_INS = (
    "Next one.",
    "Here is another question.",
    "Thanks. One more.",
    "Ok, a new problem.",
    "Good. Now this one.",
    "Let's try a different one.",
    "Another question for you.",
    "Moving on.",
    "Please solve this too.",
    "I have one more.",
    "Now a different question.",
    "Here is the next problem.",
)

# A reply the user rejects without saying why: no direction, no digit, no number, nothing a
# critique would carry, and never the evaluation's retry message itself (tests check both).
NUDGES = (
    "No. Try again.",
    "That is incorrect.",
    "No, that's wrong.",
    "Wrong. Once more.",
    "Not quite. Another try?",
    "Incorrect, try again.",
    "No.",
    "Try again.",
)

# Words of judgement or direction that no filler nudge may contain, besides every word of the
# nudges and of the oracle teacher's critiques (see filler_words).
FEEDBACK_WORDS = frozenset(
    {"no", "not", "wrong", "incorrect", "again", "try", "retry", "correct", "right", "answer"}
    | {"high", "low", "higher", "lower", "larger", "smaller", "error", "digit", "quite"}
    | {"once", "more", "another"}
)

# How far a near-miss reply is off: the slips of someone who can add (a carry, a units digit,
# a tens digit), each either way.
NEAR_MISS_OFFSETS = (1, 2, 3, 9, 10, 11, 20)


def expression_steps(expression: str) -> tuple[list[str], str]:
    """The worked steps of an integer arithmetic expression and its value
    (:func:`rl2f.tasks.arithmetic.evaluate_with_steps`).

    Raises ValueError for anything that is not plain integer arithmetic, or whose value is not
    an integer (a tiny model should not learn fractions from a handful of examples).
    """
    try:
        tree = parse_python(expression.strip(), mode="eval")
    except (SyntaxError, RecursionError) as exc:
        raise ValueError(f"not an expression: {expression!r}") from exc
    try:
        value, steps = evaluate_with_steps(tree.body)
    except ZeroDivisionError as exc:
        raise ValueError(f"division by zero in {expression!r}") from exc
    except RecursionError as exc:  # nested far deeper than any worked solution could show
        raise ValueError(f"expression too deeply nested: {expression[:40]!r}...") from exc
    if value.denominator != 1:
        raise ValueError(f"{expression!r} is not an integer")
    return steps, number_text(value)


def _expression_of(task: Task) -> str | None:
    """reasoning-gym keeps the expression in the generator metadata (inside the verifier
    config); other sources may put it in the task metadata."""
    entry = task.verifier_config.get("entry")
    candidates: list[Any] = [task.metadata.get("expression")]
    if isinstance(entry, dict) and isinstance(entry.get("metadata"), dict):
        candidates.append(entry["metadata"].get("expression"))
    return next((c for c in candidates if isinstance(c, str) and c.strip()), None)


def worked_solution(task: Task) -> str:
    """The reply the model learns for a task: the arithmetic steps when the task's expression is
    known and agrees with its answer, then the ``Answer:`` line every verifier reads."""
    answer_line = f"Answer: {task.answer.strip()}"
    expression = _expression_of(task)
    if expression is None:
        return answer_line
    try:
        steps, value = expression_steps(expression)
    except ValueError:
        return answer_line
    if not steps or value != task.answer.strip():
        return answer_line
    return "\n".join([*steps, answer_line])


def near_miss(task: Task, rng: random.Random) -> str:
    """The task's worked solution with its result off by a small slip, carried through to the
    ``Answer:`` line (the steps before the last stay right, like a slip at the end)."""
    reply = worked_solution(task)
    try:
        value = int(task.answer.strip())
    except ValueError:
        return reply  # not an integer answer: nothing to miss by a little
    wrong = value + rng.choice(NEAR_MISS_OFFSETS) * rng.choice((-1, 1))
    *steps, _ = reply.split("\n")
    if steps and steps[-1].endswith(f"= {value}"):
        steps[-1] = f"{steps[-1][: -len(str(value))]}{wrong}"
    return "\n".join([*steps, f"Answer: {wrong}"])


def edit_reply(miss: str, task: Task) -> str:
    """The correct reply to a near miss as an edit of its wrong answer: ``-76 - 1 = -77`` then
    the ``Answer:`` line. What the edit says (its direction) is what a critique can teach."""
    wrong, right = int(miss.rsplit("Answer: ", 1)[1]), int(task.answer.strip())
    operator = "+" if right > wrong else "-"
    return f"{wrong} {operator} {abs(right - wrong)} = {right}\nAnswer: {right}"


@functools.cache
def filler_words() -> tuple[str, ...]:
    """Words for filler nudges: the lower-case words of Python's own help topics (in the
    standard library, so no download; they differ between Python versions, which the lock
    pins), less every word a teacher's critique or a nudge uses, so filler carries no
    feedback."""
    from pydoc_data.topics import topics

    from rl2f.teachers.oracle import BANDS, DIGIT_NAMES, PHRASES, RELATIVE_BANDS

    feedback = [*NUDGES, *DIGIT_NAMES]
    feedback += [text for texts in PHRASES.values() for text in texts]
    feedback += [str(band[-1]) for band in (*BANDS, *RELATIVE_BANDS)]
    banned = set(re.findall(r"[a-z]+", " ".join(feedback).lower())) | FEEDBACK_WORDS
    words = {w for text in topics.values() for w in re.findall(r"\b[a-z]{2,10}\b", text)}
    return tuple(sorted(words - banned))


def filler_nudge(rng: random.Random) -> str:
    """1-3 sentences of 3-8 random words: user text that says nothing about the answer."""
    words = filler_words()
    sentences = (
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 8))).capitalize() + "."
        for _ in range(rng.randint(1, 3))
    )
    return " ".join(sentences)


def _later_question(prompt: str, rng: random.Random, lead_in_rate: float) -> str:
    if rng.random() < lead_in_rate:
        return f"{rng.choice(LEAD_INS)}\n{prompt}"
    return prompt


def build_conversations(
    tasks: Sequence[Task],
    count: int,
    questions_per_conversation: int,
    seed: int,
    lead_in_rate: float = 0.5,
    retry_rate: float = 0.0,
    edit_rate: float = 0.0,
    filler_nudge_rate: float = 0.0,
) -> list[list[Message]]:
    """``count`` conversations of 1..``questions_per_conversation`` independent questions each,
    every task used about equally often. The first question is always the bare task prompt,
    exactly as a rollout's first turn shows it; a later one may follow a small-talk opener
    (``lead_in_rate``). With probability ``retry_rate`` a question is first answered by a near
    miss (marked ``"train": False``: the chat template leaves it out of the loss), then nudged
    (:data:`NUDGES`, or with probability ``filler_nudge_rate`` a :func:`filler_nudge`), then
    answered correctly: with probability ``edit_rate`` by an :func:`edit_reply` of the miss.
    A zero rate draws no random number, so the corpus without it is unchanged."""
    if not tasks:
        raise ValueError("no tasks to build a corpus from")
    rng = random.Random(seed)
    replies = {task.id: worked_solution(task) for task in tasks}
    stream = _shuffled_forever(list(tasks), rng)
    most = min(questions_per_conversation, len({task.prompt for task in tasks}))
    conversations = []
    for _ in range(count):
        size = rng.randint(1, most)
        chosen: list[Task] = []
        while len(chosen) < size:
            task = next(stream)
            # A question asked twice in one conversation would show a second answer to it;
            # a repeat is skipped (it comes round again later).
            if all(task.prompt != other.prompt for other in chosen):
                chosen.append(task)
        messages: list[Message] = []
        for turn, task in enumerate(chosen):
            question = task.prompt if turn == 0 else _later_question(task.prompt, rng, lead_in_rate)
            messages.append({"role": "user", "content": question})
            reply = replies[task.id]
            if rng.random() < retry_rate:
                miss = near_miss(task, rng)
                if miss != reply:
                    messages.append({"role": "assistant", "content": miss, "train": False})
                    filler = filler_nudge_rate and rng.random() < filler_nudge_rate
                    nudge = filler_nudge(rng) if filler else rng.choice(NUDGES)
                    messages.append({"role": "user", "content": nudge})
                    if edit_rate and rng.random() < edit_rate:
                        reply = edit_reply(miss, task)
            messages.append({"role": "assistant", "content": reply})
        conversations.append(messages)
    return conversations


def _shuffled_forever(tasks: list[Task], rng: random.Random) -> Iterator[Task]:
    while True:
        order = tasks[:]
        rng.shuffle(order)
        yield from order


def corpus_texts(conversations: Sequence[list[Message]]) -> Iterator[str]:
    """What the tokenizer is trained on: every message, plus the role names the chat template
    writes, so that ``assistant`` is one token rather than nine."""
    for messages in conversations:
        for message in messages:
            yield message["role"]
            yield message["content"]
