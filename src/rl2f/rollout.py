"""The batched multi-turn didactic loop: student -> verifier -> teacher -> student ...

Every turn, all episodes still going sample their next attempt in one batched student call, are
verified concurrently, and the failed ones get their critiques in one batched teacher call
through the leak guard. An episode ends when it is solved or after ``max_turns`` attempts.

The student is rolled out on token ids, never on re-tokenised text: its next prompt is its
previous prompt ids, plus exactly the ids it sampled, plus the chat template's rendering of the
feedback message. Only that rendering is tokenised, computed as a string delta between two
renderings of the conversation, so the policy-gradient mask lines up with what was sampled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from rl2f.config import Config, SamplingConfig
from rl2f.engines import request_seed
from rl2f.engines.base import Generation, Message, TokenEngine, TokenSession, open_session
from rl2f.episodes import Episode, Turn, discounted_reward
from rl2f.errors import UserError
from rl2f.leakage import LeakGuard, make_guard
from rl2f.tasks.schema import Task
from rl2f.tasks.verifiers import Verdict, verify
from rl2f.teachers.base import CritiqueRequest, Teacher
from rl2f.teachers.guarded import guarded_critiques

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# A content string no template rewrites (no whitespace to trim, no markup), used to find where
# the template puts an assistant message's content and what it writes after it.
_PROBE = "RL2FPROBECONTENT"


class ChatTurns:
    """Token-exact multi-turn prompts from a tokenizer's chat template.

    Works for any template whose earlier turns render the same whatever follows them (ChatML,
    Llama 3, Mistral, ...). Templates that rewrite earlier turns, as some reasoning templates do
    when they drop the thinking of past assistant messages, cannot be rolled out token-exactly;
    they are refused with a :class:`UserError` naming the model (see trl#5224)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, model_name: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name or getattr(tokenizer, "name_or_path", "") or "the student"
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []))
        self.closing = self._assistant_closing()

    # -------------------------------------------------------------- rendering
    def render(self, messages: list[Message], *, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as exc:  # no template, or a Jinja error raised by the template itself
            raise UserError(
                f"model {self.model_name}: cannot render its chat template ({exc})"
            ) from None

    def encode(self, text: str) -> list[int]:
        # The template already wrote any BOS it wants; adding special tokens would double it.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _assistant_closing(self) -> str:
        """What the template writes after an assistant message's content (``<|im_end|>\\n`` in
        ChatML, ``<|eot_id|>`` in Llama 3): the student must see it before the next user turn
        even when its generation stopped without it."""
        rendered = self.render(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}],
            generation_prompt=False,
        )
        if _PROBE not in rendered:
            raise UserError(
                f"model {self.model_name}: its chat template drops assistant message content; "
                "it cannot be used for multi-turn rollouts"
            )
        return rendered[rendered.rindex(_PROBE) + len(_PROBE) :]

    # -------------------------------------------------------------- token ids
    def prompt_ids(self, messages: list[Message]) -> list[int]:
        return self.encode(self.render(messages, generation_prompt=True))

    def feedback_ids(
        self, conversation: list[Message], feedback: str, generation: Generation
    ) -> list[int]:
        """Ids the student sees after its attempt (the last message of ``conversation``) and
        before its next one: the rest of the template's end of turn, the feedback as a user
        message, and the assistant header."""
        without = self.render(conversation, generation_prompt=False)
        with_feedback = self.render(
            [*conversation, {"role": "user", "content": feedback}], generation_prompt=True
        )
        if not with_feedback.startswith(without) or not without.endswith(self.closing):
            raise UserError(
                f"model {self.model_name}: its chat template renders earlier turns differently "
                "once a new message follows them (e.g. it drops past reasoning), so multi-turn "
                "rollouts cannot be token-exact; use a model or chat template whose earlier "
                "turns render the same whatever follows them"
            )
        return self.encode(self._missing_closing(generation) + with_feedback[len(without) :])

    def _missing_closing(self, generation: Generation) -> str:
        """The template's end of turn minus the part the student already generated: a generation
        that stopped on its end-of-turn token keeps that token (it was sampled and carries loss);
        one cut at ``max_new_tokens`` gets the whole closing from the environment."""
        ids = generation.token_ids
        if generation.finish_reason == "stop" and ids and ids[-1] in self.special_ids:
            stop_text = self.tokenizer.decode([ids[-1]], skip_special_tokens=False)
            if stop_text and self.closing.startswith(stop_text):
                return self.closing[len(stop_text) :]
        return self.closing


@dataclass(frozen=True)
class RolloutSettings:
    """How :func:`run_episodes` rolls out, apart from the tasks, the student and the teacher:
    one object, so that training, the rollout stage and the evaluation cannot drift apart."""

    sampling: SamplingConfig
    num_generations: int  # episodes per task (G)
    max_turns: int  # student attempts per episode at most
    gamma: float  # reward of a solve at turn t: gamma^(t-1)
    max_regenerations: int  # leaking critiques re-requested before the fallback
    fallback_message: str  # sent instead of a critique that still leaks
    guard: LeakGuard = field(default_factory=LeakGuard)
    system_prompt: str | None = None
    verify_workers: int | None = None  # threads verifying attempts (None: CPUs + 4, at most 32)
    progress: bool = True  # a progress bar on stderr

    def close(self) -> None:
        self.guard.close()

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        *,
        num_generations: int,
        max_turns: int,
        sampling: SamplingConfig | None = None,
        progress: bool = True,
    ) -> RolloutSettings:
        """The project's settings (``rollout.gamma``, ``rollout.sampling``, the teacher's
        regeneration budget and fallback, the leak guard with the LLM judge if one is named)
        with the caller's episode shape. Call :meth:`close` when done (the judge's engine)."""
        return cls(
            sampling=sampling or cfg.rollout.sampling,
            guard=make_guard(cfg.teacher),
            num_generations=num_generations,
            max_turns=max_turns,
            gamma=cfg.rollout.gamma,
            max_regenerations=cfg.teacher.max_regenerations,
            fallback_message=cfg.teacher.fallback_message,
            progress=progress,
        )


@dataclass
class _Running:
    """One episode while it is rolled out: the public conversation, the exact ids the student
    will be conditioned on next, the record being filled in, and its index (task position x G
    + generation), which names its conversation in the student's session and its random
    stream."""

    task: Task
    episode: Episode
    conversation: list[Message]
    context_ids: list[int]
    index: int


@dataclass(frozen=True)
class _Attempt:
    state: _Running
    generation: Generation
    verdict: Verdict


def run_episodes(
    tasks: Sequence[Task],
    student: TokenEngine,
    teacher: Teacher,
    settings: RolloutSettings,
    *,
    policy_name: str,
    first_index: int = 0,
) -> list[Episode]:
    """Roll out ``settings.num_generations`` didactic episodes per task.

    Episodes come back grouped by task, in task order, the G episodes of a task side by side
    (the layout GRPO's group-normalised advantages expect). Each carries the sampling logprobs
    of its student tokens and the flat prompt/completion/mask view for training.

    The sampling seed fixes every draw: the same call gives the same episodes, so callers that
    roll out repeatedly (one call per training step) should vary it. An episode whose next
    prompt would not fit the student's context ends early (``end_reason="context_limit"``).

    ``first_index`` numbers the episodes from there (an episode's index picks its random
    stream): a caller that rolls out a long task list in shards passes each shard's position
    x G, so the episodes of every shard are those of one call over the whole list.
    """
    num_generations, max_turns = settings.num_generations, settings.max_turns
    sampling = settings.sampling
    if num_generations < 1 or max_turns < 1:
        raise ValueError(
            f"num_generations and max_turns must be >= 1 (got {num_generations}, {max_turns})"
        )
    chat = ChatTurns(student.tokenizer)
    context_length: int | None = getattr(student, "context_length", None)
    running = [
        _start(task, group, index, chat, policy_name, teacher.name, settings.system_prompt)
        for index, (task, group) in enumerate(
            product(tasks, range(num_generations)), start=first_index
        )
    ]
    for state in running[::num_generations]:
        if not _fits(state, sampling, context_length):
            raise UserError(
                f"task {state.task.id}: prompt of {len(state.context_ids)} tokens + "
                f"max_new_tokens {sampling.max_new_tokens} exceed the student's context length "
                f"{context_length}"
            )
    episodes = [state.episode for state in running]
    workers = settings.verify_workers or min(32, (os.cpu_count() or 1) + 4)
    bar = tqdm(total=len(running), desc="episodes", unit="ep", disable=not settings.progress)
    # The session keeps each conversation's state in the student between turns (its KV cache
    # for a transformers student), so a later turn reads only its new tokens.
    student_session = open_session(student)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify")
    with pool, bar, closing(student_session):
        for turn in range(1, max_turns + 1):
            running = _end_overlong(running, sampling, context_length, bar)
            if not running:
                break
            bar.set_postfix(turn=turn, active=len(running))
            attempts = _student_turn(running, turn, student_session, chat, sampling, pool)
            failed = []
            for attempt in attempts:
                episode = attempt.state.episode
                if attempt.verdict.correct:
                    episode.solved_at, episode.end_reason = turn, "solved"
                    episode.reward = discounted_reward(turn, settings.gamma)
                elif turn == max_turns:
                    episode.end_reason = "max_turns"
                else:
                    failed.append(attempt)
            bar.update(len(attempts) - len(failed))
            _teacher_turn(failed, turn, teacher, chat, settings)
            running = [attempt.state for attempt in failed]
    return episodes


def _start(
    task: Task,
    group: int,
    index: int,
    chat: ChatTurns,
    policy_name: str,
    teacher_name: str,
    system_prompt: str | None,
) -> _Running:
    conversation: list[Message] = [{"role": "user", "content": task.prompt}]
    if system_prompt:
        conversation.insert(0, {"role": "system", "content": system_prompt})
    prompt_ids = chat.prompt_ids(conversation)
    episode = Episode(
        task_id=task.id,
        domain=task.domain,
        split=task.split,
        policy=policy_name,
        teacher=teacher_name,
        group=group,
        prompt_ids=prompt_ids,
        turns=[],
        solved_at=None,
        reward=0.0,
        student_visible=[message["content"] for message in conversation],
    )
    return _Running(task, episode, conversation, list(prompt_ids), index)


def _fits(state: _Running, sampling: SamplingConfig, context_length: int | None) -> bool:
    return context_length is None or (
        len(state.context_ids) + sampling.max_new_tokens <= context_length
    )


def _end_overlong(
    running: list[_Running], sampling: SamplingConfig, context_length: int | None, bar: tqdm
) -> list[_Running]:
    kept = []
    for state in running:
        if _fits(state, sampling, context_length):
            kept.append(state)
        else:
            state.episode.end_reason = "context_limit"
    if len(kept) < len(running):
        log.warning(
            "%d episode(s) ended early: the next attempt would not fit the student's context "
            "length %s",
            len(running) - len(kept),
            context_length,
        )
        bar.update(len(running) - len(kept))
    return kept


def _student_turn(
    running: list[_Running],
    turn: int,
    student: TokenSession,
    chat: ChatTurns,
    sampling: SamplingConfig,
    pool: ThreadPoolExecutor,
) -> list[_Attempt]:
    # An episode draws from the stream of (turn seed, its index), whatever else is still
    # running: which episodes were solved earlier differs between models, and the paired
    # comparisons gain power when every model draws the same numbers for the same (task,
    # generation, turn). At turn 1 every episode runs, so its index is its position in the call
    # and turn 1 draws what it drew when requests were seeded by position. A fresh seed per turn
    # keeps an episode from reusing its numbers every turn, which would make "repeats its wrong
    # answer" look likelier than it is.
    turn_seed = request_seed(sampling.seed, turn)
    generations = student.generate(
        [state.context_ids for state in running],
        sampling,
        return_logprobs=True,
        keys=[state.index for state in running],
        seeds=[request_seed(turn_seed, state.index) for state in running],
    )
    if len(generations) != len(running):
        raise RuntimeError(
            f"student engine returned {len(generations)} generations for {len(running)} prompts"
        )
    texts = [chat.decode(generation.token_ids) for generation in generations]
    # Threads, not processes: code runs in a subprocess sandbox and math-verify in worker
    # processes, so the pool mostly waits on other processes.
    verdicts = list(pool.map(verify, [state.task for state in running], texts))
    attempts = []
    for state, generation, text, verdict in zip(running, generations, texts, verdicts, strict=True):
        state.episode.turns.append(Turn.attempt(text, generation, verdict))
        state.conversation.append({"role": "assistant", "content": text})
        state.context_ids.extend(generation.token_ids)
        attempts.append(_Attempt(state, generation, verdict))
    return attempts


def _teacher_turn(
    failed: list[_Attempt],
    turn: int,
    teacher: Teacher,
    chat: ChatTurns,
    settings: RolloutSettings,
) -> None:
    requests = [
        CritiqueRequest(
            task=attempt.state.task,
            conversation=list(attempt.state.conversation),
            attempt=attempt.state.conversation[-1]["content"],
            verdict=attempt.verdict,
            turn=turn,
        )
        for attempt in failed
    ]
    critiques = guarded_critiques(
        teacher, requests, settings.guard, settings.max_regenerations, settings.fallback_message
    )
    for attempt, critique in zip(failed, critiques, strict=True):
        state = attempt.state
        feedback_ids = chat.feedback_ids(state.conversation, critique.text, attempt.generation)
        state.episode.turns.append(
            Turn(
                role="teacher",
                text=critique.text,
                token_ids=feedback_ids,
                leak=dict(critique.flags),
                leaked_attempts=critique.leaked_attempts,
                fell_back=critique.fell_back,
            )
        )
        state.episode.student_visible.append(critique.text)
        state.conversation.append({"role": "user", "content": critique.text})
        state.context_ids.extend(feedback_ids)


def assert_information_asymmetry(
    episode: Episode,
    task: Task,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    guard: LeakGuard | None = None,
) -> None:
    """Fail if the student was conditioned on the privileged answer or solution without having
    written it first.

    The task prompt is public by definition, so it must be exactly the task's prompt (and, given
    the tokenizer, ``prompt_ids`` must be nothing but its template rendering). Every other text
    the student saw (a system prompt, each feedback message; given the tokenizer, the decoded
    environment tokens themselves, which is what the student was really conditioned on) is
    checked with the leak guard's matching. A match is allowed only after one of the student's
    own earlier attempts matched as well.
    """
    guard = guard or LeakGuard()
    where = f"episode {episode.task_id}/{episode.group}"
    if episode.task_id != task.id:
        raise AssertionError(f"{where}: checked against task {task.id}")
    teacher_turns = episode.teacher_turns
    initial = episode.student_visible[: len(episode.student_visible) - len(teacher_turns)]
    if not initial or initial[-1] != task.prompt:
        raise AssertionError(f"{where}: the first user message is not the task's public prompt")
    if episode.student_visible[len(initial) :] != [turn.text for turn in teacher_turns]:
        raise AssertionError(f"{where}: student_visible does not match the feedback turns")

    def leaks(text: str) -> bool:
        return guard.check(task, text).leaked

    for text in initial[:-1]:
        if leaks(text):
            raise AssertionError(f"{where}: the system prompt reveals the answer: {text!r}")
    if tokenizer is not None:
        chat = ChatTurns(tokenizer)
        roles = ["system"] * (len(initial) - 1) + ["user"]
        messages = [{"role": r, "content": c} for r, c in zip(roles, initial, strict=True)]
        if episode.prompt_ids != chat.prompt_ids(messages):
            raise AssertionError(f"{where}: prompt_ids are not the rendering of the task prompt")

    student_wrote_answer = False
    for turn in episode.turns:
        if turn.role == "student":
            student_wrote_answer = student_wrote_answer or leaks(turn.text)
            continue
        seen = [turn.text]
        if tokenizer is not None:
            seen.append(tokenizer.decode(turn.token_ids, skip_special_tokens=True))
        for text in seen:
            if leaks(text) and not student_wrote_answer:
                raise AssertionError(f"{where}: feedback reveals the answer: {text!r}")
