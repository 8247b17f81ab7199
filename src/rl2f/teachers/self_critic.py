"""The self teacher: the policy critiques its own last attempt, with no privileged data.

This is the paper's self-improvement setting: at test time there is no teacher, and the model
(trained by critique distillation to predict the teacher's feedback from public context) writes
the critique itself. Information asymmetry holds structurally: the critique is built from a
:class:`PublicView`, which copies only the public conversation out of a request (the problem,
the student's attempts and the earlier, already guarded critiques), so no code path here can
reach the task's answer, solution, verifier config or diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

from rl2f.config import SamplingConfig, TeacherConfig
from rl2f.engines.base import ChatEngine, Message
from rl2f.errors import UserError
from rl2f.teachers.base import CritiqueRequest
from rl2f.teachers.llm import MAX_CRITIQUE_CHARS, check_template, clean_critique

SELF_TEMPLATE_FIELDS = frozenset({"prompt", "attempt"})


def self_critique_messages(conversation: list[Message], template: str) -> list[Message]:
    """The public conversation (ending with the student's attempt) plus the request to critique
    that attempt. It lives with the teacher that sends it; critique distillation trains on the
    same function, so training and use see one format. The template may name {prompt} (the
    problem) and {attempt} (the last answer)."""
    problem = next((m["content"] for m in conversation if m["role"] == "user"), None)
    if problem is None or conversation[-1]["role"] != "assistant":
        raise ValueError("a self-critique conversation holds the problem and ends with an attempt")
    try:
        request = template.format(prompt=problem, attempt=conversation[-1]["content"])
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(
            f"teacher.self_prompt_template: cannot be filled ({exc!r}); it may name only "
            f"{{prompt}} and {{attempt}}"
        ) from None
    return [*conversation, {"role": "user", "content": request}]


@dataclass(frozen=True)
class PublicView:
    """What the student may see of a request: the conversation, ending with its attempt."""

    conversation: tuple[Message, ...]

    @classmethod
    def of(cls, request: CritiqueRequest) -> PublicView:
        messages = [dict(message) for message in request.conversation]
        if not any(message["role"] == "user" for message in messages):
            messages.insert(0, {"role": "user", "content": request.task.prompt})
        if messages[-1]["role"] != "assistant":
            messages.append({"role": "assistant", "content": request.attempt})
        return cls(tuple(messages))


def self_critique_conversation(view: PublicView, template: str) -> list[Message]:
    """The public conversation plus the request to critique the last attempt, in exactly the
    format critique distillation trains on (:func:`self_critique_messages`), so training and
    test-time self-critique see identical inputs."""
    return self_critique_messages([dict(message) for message in view.conversation], template)


class SelfCritic:
    name = "self"
    privileged = False

    def __init__(
        self, engine: ChatEngine, cfg: TeacherConfig, max_chars: int = MAX_CRITIQUE_CHARS
    ) -> None:
        check_template(
            cfg.self_prompt_template, SELF_TEMPLATE_FIELDS, "teacher.self_prompt_template"
        )
        self.engine = engine
        self.template = cfg.self_prompt_template
        self.sampling: SamplingConfig = cfg.sampling
        self.max_chars = max_chars

    def critique(self, requests: list[CritiqueRequest]) -> list[str]:
        return self.critique_views([PublicView.of(request) for request in requests])

    def critique_views(self, views: list[PublicView]) -> list[str]:
        if not views:
            return []
        conversations = [self_critique_conversation(view, self.template) for view in views]
        texts = self.engine.chat(conversations, self.sampling)
        if len(texts) != len(views):
            raise RuntimeError(
                f"chat engine returned {len(texts)} replies for {len(views)} conversations"
            )
        # Empty stays empty: the guarded loop sends the fallback and counts it as one.
        return [clean_critique(text, self.max_chars) for text in texts]

    def close(self) -> None:
        """Nothing to release: the engine is the student's, and its owner closes it."""

    def engine_stats(self) -> dict[str, int]:
        return {}  # the engine is the student's: its counters are not the teacher's
