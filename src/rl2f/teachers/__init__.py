"""Teacher policies behind one interface (:mod:`rl2f.teachers.base`), and the factory that picks
one from ``TeacherConfig.kind``:

- ``oracle``: rule-based critiques from the verifier's diagnostics (privileged; the default);
- ``llm``: a language model given the answer, solution and verifier report (privileged);
- ``self``: the student model critiques its own attempt from public context only;
- ``retry``: a fixed "try again" message, the no-content control.

Privileged teachers' critiques go through :func:`rl2f.teachers.guarded.guarded_critiques`.
"""

from __future__ import annotations

from rl2f.config import TeacherConfig
from rl2f.engines.base import ChatEngine
from rl2f.errors import UserError
from rl2f.teachers.base import CritiqueRequest, Teacher
from rl2f.teachers.llm import LLMTeacher
from rl2f.teachers.oracle import OracleTeacher
from rl2f.teachers.retry import RetryTeacher
from rl2f.teachers.self_critic import PublicView, SelfCritic

__all__ = [
    "CritiqueRequest",
    "LLMTeacher",
    "OracleTeacher",
    "PublicView",
    "RetryTeacher",
    "SelfCritic",
    "Teacher",
    "make_teacher",
]


def make_teacher(cfg: TeacherConfig, *, engine: ChatEngine | None = None) -> Teacher:
    """Build the teacher ``cfg.kind`` names.

    ``engine``: for ``self``, the student's own engine (required: the policy critiques itself);
    for ``llm``, an engine already serving the teacher model, otherwise one is built from
    ``cfg.engine`` and ``cfg.model``. ``teacher.close()`` closes only an engine built here.
    """
    if cfg.kind == "oracle":
        return OracleTeacher(cfg.level)
    if cfg.kind == "retry":
        return RetryTeacher(cfg.retry_message)
    if cfg.kind == "self":
        if engine is None:
            raise UserError(
                "teacher.kind=self: the student critiques itself, so the student's engine "
                "must be passed to make_teacher"
            )
        return SelfCritic(engine, cfg)
    if cfg.kind == "llm":
        owns_engine = engine is None
        if engine is None:
            model = cfg.model or cfg.engine.model
            if not model:
                raise UserError(
                    "teacher.kind=llm: set teacher.model (a path or hub id) or "
                    "teacher.engine.model for an openai-compatible server"
                )
            from rl2f.engines import make_engine

            engine = make_engine(cfg.engine, model)
        return LLMTeacher(engine, cfg, owns_engine=owns_engine)
    raise UserError(f"teacher.kind: unknown teacher {cfg.kind!r}")
