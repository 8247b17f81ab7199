"""Generation engines: the transformers engine on the tiny model, the OpenAI-compatible engine
against real local HTTP servers (one scripted, one ``transformers serve``), vLLM on a GPU."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import torch
from servers import stop_process
from transformers import AutoModelForCausalLM, PreTrainedModel

from rl2f.config import EngineConfig, SamplingConfig, TinyModelConfig
from rl2f.engines import make_engine, request_seed, transformers_engine
from rl2f.engines.base import (
    ChatEngine,
    Generation,
    SessionEngine,
    StatelessSession,
    TokenEngine,
    open_session,
)
from rl2f.engines.openai_engine import OpenAIChatEngine
from rl2f.engines.transformers_engine import (
    NOISE_BUDGET_BYTES,
    GumbelNoise,
    TransformersEngine,
    TransformersSession,
    noise_block_steps,
    render_chat,
    sampling_log_probs,
    stop_token_ids,
)
from rl2f.errors import UserError

TEXTS = [
    "3",
    "Calculate 1 + 2.",
    "Answer: 7",
    "Calculate 12 + 7. Answer:",
    "Calculate 19 + 19. Answer: 38. Calculate 4 + 4.",
    "Calculate 5 + 5. Answer: 10. Calculate 6 + 6. Answer: 12. Calculate",
]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=10)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tiny model's matrices are too small to gain from threads; on a shared machine extra
    threads only contend (one thread ran these tests over ten times faster here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lively_model(tiny_model_dir: Path) -> PreTrainedModel:
    """The tiny model with large random weights: its next token depends strongly on the context,
    so batching or position bugs change the output (the freshly initialised model, with weights
    of scale 0.02, repeats one token whatever it is given)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


@pytest.fixture(scope="module")
def engine(lively_model: PreTrainedModel) -> Iterator[TransformersEngine]:
    engine = TransformersEngine(lively_model, batch_size=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prompts(engine: TransformersEngine) -> list[list[int]]:
    return [engine.tokenizer(text)["input_ids"] for text in TEXTS]


def forward_log_probs(
    model: PreTrainedModel, prompt: list[int], completion: list[int], temperature: float
) -> list[float]:
    """Log-probability of each completion token from one unpadded forward pass over
    prompt + completion: the reference the engine's incremental numbers must match."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    # The logit at position p predicts the token at p + 1.
    predicting = logits[len(prompt) - 1 : len(prompt) + len(completion) - 1]
    log_probs = torch.log_softmax(predicting / (temperature or 1.0), dim=-1)
    return log_probs.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1).tolist()


# ---------------------------------------------------------------- transformers engine
def test_engine_satisfies_the_interface(engine: TransformersEngine) -> None:
    assert isinstance(engine, TokenEngine)
    assert isinstance(engine, ChatEngine)


def test_greedy_batched_equals_one_at_a_time(
    engine: TransformersEngine, lively_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    batched = engine.generate(prompts, GREEDY, return_logprobs=True)
    single = TransformersEngine(lively_model, batch_size=1)
    alone = [single.generate([p], GREEDY, return_logprobs=True)[0] for p in prompts]

    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    for b, a in zip(batched, alone, strict=True):
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    # The check has teeth: outputs differ between prompts and within a completion.
    assert len({tuple(g.token_ids) for g in batched}) == len(prompts)
    assert all(len(set(g.token_ids)) > 1 for g in batched)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.5])
def test_logprobs_match_a_forward_pass(
    engine: TransformersEngine,
    lively_model: PreTrainedModel,
    prompts: list[list[int]],
    temperature: float,
) -> None:
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=8, seed=5)
    for prompt, generation in zip(prompts, engine.generate(prompts, sampling, True), strict=True):
        expected = forward_log_probs(lively_model, prompt, generation.token_ids, temperature)
        assert generation.logprobs == pytest.approx(expected, abs=1e-4)


def test_logprobs_are_none_unless_asked(engine: TransformersEngine, prompts: list[list[int]]):
    assert all(g.logprobs is None for g in engine.generate(prompts, GREEDY))


def test_a_tiny_top_p_leaves_only_the_greedy_token(
    engine: TransformersEngine, prompts: list[list[int]]
) -> None:
    greedy = engine.generate(prompts, GREEDY)
    nucleus = SamplingConfig(temperature=1.0, top_p=1e-6, max_new_tokens=10, seed=3)
    sampled = engine.generate(prompts, nucleus, return_logprobs=True)
    assert [g.token_ids for g in sampled] == [g.token_ids for g in greedy]
    # The renormalised nucleus holds one token, so each sampled token had probability 1.
    assert all(lp == pytest.approx(0.0, abs=1e-6) for g in sampled for lp in g.logprobs or [])


def test_max_new_tokens_ends_with_length(engine: TransformersEngine, prompts: list[list[int]]):
    for max_new_tokens in (1, 6):
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
        for generation in engine.generate(prompts, sampling):
            assert not set(generation.token_ids) & engine.stop_ids
            assert len(generation.token_ids) == max_new_tokens
            assert generation.finish_reason == "length"


def test_each_request_stops_at_its_own_stop_token(
    engine: TransformersEngine, lively_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    reference = engine.generate(prompts, GREEDY, return_logprobs=True)
    # Make the 4th token of the longest prompt's completion a stop token (checkpoints such as
    # Llama 3 list several EOS ids in generation_config), as long as it did not appear earlier.
    target = reference[-1].token_ids
    cut = next(k for k in range(3, len(target)) if target[k] not in target[:k])
    stopping_model = copy.deepcopy(lively_model)
    stopping_model.generation_config.eos_token_id = [engine.tokenizer.eos_token_id, target[cut]]
    stopping = TransformersEngine(stopping_model, batch_size=4)
    assert stopping.stop_ids == {engine.tokenizer.eos_token_id, target[cut]}

    generations = stopping.generate(prompts, GREEDY, return_logprobs=True)

    assert generations[-1].token_ids == target[: cut + 1]
    assert generations[-1].finish_reason == "stop"
    for generation, ref in zip(generations, reference, strict=True):
        ends = [k + 1 for k, t in enumerate(ref.token_ids) if t in stopping.stop_ids]
        end = ends[0] if ends else len(ref.token_ids)
        # A row that stops leaves the other rows of its batch untouched.
        assert generation.token_ids == ref.token_ids[:end]
        assert generation.logprobs == pytest.approx(ref.logprobs[:end], abs=1e-4)
        assert generation.finish_reason == ("stop" if ends else "length")
        assert generation.text == engine.tokenizer.decode(
            generation.token_ids, skip_special_tokens=True
        )


def test_seeded_sampling_is_reproducible(
    engine: TransformersEngine, lively_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10, seed=11)
    first = engine.generate(prompts, sampling, return_logprobs=True)
    assert engine.generate(prompts, sampling, return_logprobs=True) == first
    # One random stream per request: the batch a request lands in does not matter.
    single = TransformersEngine(lively_model, batch_size=1)
    assert [g.token_ids for g in single.generate(prompts, sampling)] == [g.token_ids for g in first]
    other_seed = engine.generate(prompts, sampling.model_copy(update={"seed": 12}))
    assert [g.token_ids for g in other_seed] != [g.token_ids for g in first]
    # Repeated prompts (G samples of one task) are still sampled independently.
    repeated = engine.generate([prompts[1]] * 4, sampling)
    assert len({tuple(g.token_ids) for g in repeated}) == 4


def test_explicit_seeds_follow_the_request_wherever_it_sits(
    engine: TransformersEngine, lively_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    """A request given its own seed gets the same generation first or last, in a full batch or
    alone, through the engine, a session or a stateless session: what lets the rollout give an
    episode the same stream whichever other episodes are still running."""
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=8, seed=11)
    seeds = [request_seed(99, 10 + i) for i in range(len(prompts))]
    reference = engine.generate(prompts, sampling, True, seeds=seeds)
    order = [3, 0, 5, 1, 4, 2]
    shuffled = engine.generate(
        [prompts[i] for i in order], sampling, True, seeds=[seeds[i] for i in order]
    )
    assert_same_generations(shuffled, [reference[i] for i in order])
    single = TransformersEngine(lively_model, batch_size=1)
    for i in (0, 5):
        assert_same_generations(
            single.generate([prompts[i]], sampling, True, seeds=[seeds[i]]), [reference[i]]
        )
    with engine.session() as session:
        carried = session.generate(
            [prompts[4], prompts[2]], sampling, True, keys=["a", "b"], seeds=[seeds[4], seeds[2]]
        )
    assert_same_generations(carried, [reference[4], reference[2]])
    stateless = StatelessSession(engine).generate(
        [prompts[1]], sampling, True, keys=[0], seeds=[seeds[1]]
    )
    assert_same_generations(stateless, [reference[1]])
    # Without seeds, request i draws from request_seed(sampling.seed, i), exactly as before.
    default = engine.generate(prompts, sampling, True)
    positional = [request_seed(sampling.seed, i) for i in range(len(prompts))]
    assert engine.generate(prompts, sampling, True, seeds=positional) == default
    assert [g.token_ids for g in default] != [g.token_ids for g in reference]  # seeds matter


def test_seeds_must_be_one_per_prompt(engine: TransformersEngine, prompts: list[list[int]]):
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=4)
    with pytest.raises(UserError, match=r"^seeds: got 2 seeds for 6 prompts \(one per prompt\)$"):
        engine.generate(prompts, sampling, seeds=[1, 2])
    with engine.session() as session, pytest.raises(UserError, match="got 0 seeds for 1"):
        session.generate(prompts[:1], sampling, keys=[0], seeds=[])


def test_gumbel_max_draws_from_the_sampling_distribution() -> None:
    """Many rows of one distribution, one draw each: the frequencies match the probabilities,
    and a token the nucleus dropped (-inf) is never drawn."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0]])
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=1)
    log_probs = sampling_log_probs(logits, sampling)
    assert log_probs[0, -1] == float("-inf")
    rows = 20_000
    noise = GumbelNoise(range(rows), 5, 1, torch.device("cpu"))
    draws = (log_probs + noise.at(0, torch.ones(rows, dtype=torch.bool))).argmax(dim=-1)
    frequencies = torch.bincount(draws, minlength=5).double() / rows
    probabilities = log_probs[0].double().exp()
    spread = (probabilities * (1 - probabilities) / rows).sqrt()
    assert torch.all((frequencies - probabilities).abs() <= 5 * spread + 1e-12)
    assert frequencies[-1] == 0


def test_gumbel_noise_of_a_row_depends_on_its_seed_only() -> None:
    """A row's noise at a step is the same whatever its neighbours, whatever the block size,
    and whether or not the stopped rows beside it drew."""
    steps, vocab = 7, 50
    seeds = [request_seed(3, i) for i in range(4)]
    all_running = torch.ones(4, dtype=torch.bool)

    def stream(row_seeds: list[int], block_steps: int, running: torch.Tensor) -> torch.Tensor:
        noise = GumbelNoise(row_seeds, vocab, block_steps, torch.device("cpu"))
        return torch.stack([noise.at(step, running) for step in range(steps)], dim=1)

    reference = stream(seeds, 1, all_running)
    assert torch.equal(stream(seeds, 3, all_running), reference)
    assert torch.equal(stream(seeds[2:3], 4, all_running[:1]), reference[2:3])
    some_stopped = torch.tensor([False, True, False, True])
    assert torch.equal(stream(seeds, 3, some_stopped)[some_stopped], reference[some_stopped])
    assert len({tuple(row[0].tolist()) for row in reference}) == 4


def test_noise_blocks_fit_the_memory_budget() -> None:
    qwen_vocab = 151_936
    steps = noise_block_steps(64, qwen_vocab, 48)
    assert steps > 1 and 64 * steps * qwen_vocab * 4 <= NOISE_BUDGET_BYTES
    assert noise_block_steps(4096, qwen_vocab, 48) == 1  # one step always, even over budget
    assert noise_block_steps(64, 384, 10) == 10  # never more steps than the call samples
    assert noise_block_steps(64, 384, 1000) == 32


# ---------------------------------------------------------------- sessions (KV kept between calls)
def assert_same_generations(got: list[Generation], expected: list[Generation]) -> None:
    assert [g.token_ids for g in got] == [g.token_ids for g in expected]
    assert [g.finish_reason for g in got] == [g.finish_reason for g in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.logprobs == pytest.approx(theirs.logprobs, abs=1e-4)


def most_common_token(engine: TransformersEngine, prompts: list[list[int]]) -> int:
    generated = [t for g in engine.generate(prompts, GREEDY) for t in g.token_ids]
    return max(set(generated), key=generated.count)


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_a_session_continues_conversations_like_whole_prompts(
    lively_model: PreTrainedModel, prompts: list[list[int]], temperature: float
) -> None:
    """Four turns of six conversations (batches of 4 and 2), feedback appended after each
    attempt, some conversations ending, the rest asked in another order: every turn equals
    ``generate`` on the whole conversations. A stop token that the model writes often makes rows
    stop at different steps, so the carried caches have holes."""
    stopping_model = copy.deepcopy(lively_model)
    engine = TransformersEngine(stopping_model, batch_size=4)
    stopping_model.generation_config.eos_token_id = [
        engine.tokenizer.eos_token_id,
        most_common_token(engine, prompts),
    ]
    engine = TransformersEngine(stopping_model, batch_size=4)
    feedback = engine.tokenizer(" Try again. Answer:")["input_ids"]
    keys = [f"conversation {i}" for i in range(len(prompts))]
    contexts = dict(zip(keys, (list(p) for p in prompts), strict=True))
    reasons = set()
    with engine.session() as session:
        for turn, alive in enumerate([keys, keys, keys[::-1][1:4] + keys[:1], keys[2:4]]):
            sampling = SamplingConfig(temperature=temperature, max_new_tokens=6, seed=turn)
            asked = [contexts[key] for key in alive]
            carried = session.generate(asked, sampling, True, keys=alive)
            assert_same_generations(carried, engine.generate(asked, sampling, True))
            reasons |= {g.finish_reason for g in carried}
            for key, generation in zip(alive, carried, strict=True):
                contexts[key] = contexts[key] + generation.token_ids + feedback
    assert reasons == {"stop", "length"}


def test_later_calls_of_a_session_feed_only_the_new_tokens(
    engine: TransformersEngine, lively_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    feedback = engine.tokenizer(" Try again.")["input_ids"]
    widths: list[int] = []
    hook = lively_model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        with engine.session() as session:
            first = session.generate(prompts, GREEDY, keys=range(len(prompts)))
            widths.clear()
            longer = [p + g.token_ids + feedback for p, g in zip(prompts, first, strict=True)]
            session.generate(longer, GREEDY, keys=range(len(prompts)))
    finally:
        hook.remove()
    # Each batch's first call reads the last sampled token (never fed back) and the feedback;
    # the rest are one token per step.
    assert max(widths) == len(feedback) + 1
    assert max(len(p) for p in longer) > 3 * (len(feedback) + 1)


def test_a_session_rewinds_what_a_prompt_does_not_continue(
    engine: TransformersEngine, prompts: list[list[int]]
) -> None:
    """A prompt that repeats, shortens or rewrites what the cache holds still gets the result of
    the whole prompt: the cached tokens it does not extend are forgotten."""
    keys = list(range(len(prompts)))
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=5, seed=9)
    with engine.session() as session:
        first = session.generate(prompts, sampling, True, keys=keys)
        cached = [p + g.token_ids for p, g in zip(prompts, first, strict=True)]
        changed = [
            cached[0],  # exactly what was generated: nothing new to feed
            prompts[1],  # the original prompt again
            cached[2][:-2] + [cached[2][-1]],  # the attempt rewritten near its end
            cached[3][: len(prompts[3]) + 1],  # part of the attempt
            cached[4] + cached[4][:3],
            cached[5],
        ]
        assert_same_generations(
            session.generate(changed, sampling, True, keys=keys),
            engine.generate(changed, sampling, True),
        )


def test_a_session_without_a_reusable_cache_sends_whole_prompts(
    engine: TransformersEngine, prompts: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caches that cannot be cut by row and column (sliding windows, linear attention) are not
    kept: every call prefills the whole prompts, with the same results."""
    monkeypatch.setattr(transformers_engine, "_reusable", lambda cache: False)
    feedback = engine.tokenizer(" No.")["input_ids"]
    with engine.session() as session:
        first = session.generate(prompts, GREEDY, True, keys=range(len(prompts)))
        longer = [p + g.token_ids + feedback for p, g in zip(prompts, first, strict=True)]
        assert_same_generations(
            session.generate(longer, GREEDY, True, keys=range(len(prompts))),
            engine.generate(longer, GREEDY, True),
        )


def test_a_session_needs_one_distinct_key_per_prompt(
    lively_model: PreTrainedModel, prompts: list[list[int]]
) -> None:
    engine = TransformersEngine(lively_model, batch_size=4)
    session = engine.session()
    with pytest.raises(ValueError, match="expected 2 distinct keys"):
        session.generate(prompts[:2], GREEDY, keys=[0, 0])
    with pytest.raises(ValueError, match="expected 2 distinct keys"):
        session.generate(prompts[:2], GREEDY, keys=[0])
    engine.close()
    with pytest.raises(UserError, match="used after close"):
        session.generate(prompts[:2], GREEDY, keys=[0, 1])


def test_decoding_writes_into_room_reserved_at_the_prefill(
    engine: TransformersEngine, prompts: list[list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache grows once per call, not once per step: concatenating every step copies the
    whole cache each time."""
    grown: list[int] = []
    with_room = transformers_engine._with_room

    def counted(states: torch.Tensor, used: int, columns: int) -> torch.Tensor:
        grown.append(columns)
        return with_room(states, used, columns)

    monkeypatch.setattr(transformers_engine, "_with_room", counted)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=12)
    engine.generate(prompts[:4], sampling)  # one batch
    layers = engine.model.config.num_hidden_layers
    assert grown == [max(len(p) for p in prompts[:4]) + 12] * (2 * layers)


def test_engines_without_sessions_get_a_stateless_one(engine: TransformersEngine, prompts):
    assert isinstance(engine, SessionEngine)
    assert isinstance(open_session(engine), TransformersSession)
    stateless = OpenAIChatEngine(base_url="http://127.0.0.1:9/v1", model="teacher")
    assert not isinstance(stateless, SessionEngine)
    plain = StatelessSession(engine)
    assert_same_generations(
        plain.generate(prompts, GREEDY, True, keys=range(len(prompts))),
        engine.generate(prompts, GREEDY, True),
    )


def test_sampling_leaves_a_live_model_as_it_was(lively_model: PreTrainedModel, prompts):
    """The GRPO trainer passes the policy it is training: it must come back in train mode,
    on its device, with its weights untouched."""
    before = {k: v.clone() for k, v in lively_model.state_dict().items()}
    lively_model.train()
    try:
        live = make_engine(EngineConfig(kind="transformers", batch_size=3), lively_model)
        live.generate(prompts, SamplingConfig(max_new_tokens=4), return_logprobs=True)
        assert lively_model.training
        assert live.device == lively_model.device
    finally:
        lively_model.eval()
    after = lively_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_chat_renders_the_template_and_returns_text(tiny_model_dir: Path) -> None:
    cfg = EngineConfig(kind="transformers", batch_size=2, device="cpu")
    engine = make_engine(cfg, str(tiny_model_dir))
    conversations = [
        [{"role": "user", "content": "Calculate 1 + 2."}],
        [
            {"role": "system", "content": "You are a student."},
            {"role": "user", "content": "Calculate 3 + 4."},
            {"role": "assistant", "content": "8"},
            {"role": "user", "content": "That is not correct. Try again."},
        ],
    ]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=5)
    try:
        texts = engine.chat(conversations, sampling)
        rendered = [render_chat(engine.tokenizer, c) for c in conversations]
        expected = [g.text for g in engine.generate(rendered, sampling)]
    finally:
        engine.close()
    assert texts == expected
    assert all(isinstance(text, str) for text in texts)
    header = engine.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert all(ids[-len(header) :] == header for ids in rendered)
    with pytest.raises(UserError, match="used after close"):
        engine.chat(conversations, sampling)


def test_stop_token_ids_merge_tokenizer_and_generation_config(
    engine: TransformersEngine, lively_model: PreTrainedModel
) -> None:
    eos = engine.tokenizer.eos_token_id
    config = copy.deepcopy(lively_model.generation_config)
    config.eos_token_id = [eos, 5, 9]
    assert stop_token_ids(engine.tokenizer, config) == {eos, 5, 9}
    config.eos_token_id = 7
    assert stop_token_ids(engine.tokenizer, config) == {eos, 7}
    assert stop_token_ids(engine.tokenizer, None) == {eos}


def test_request_seeds_are_stable_and_distinct() -> None:
    seeds = {request_seed(seed, index) for seed in range(20) for index in range(50)}
    assert len(seeds) == 1000
    assert request_seed(3, 4) == request_seed(3, 4)
    assert all(0 <= s < 2**31 for s in seeds)


@pytest.mark.parametrize(
    ("bad_prompts", "message"),
    [
        ([[5], []], r"prompt 1: is empty"),
        ([[5, 10_000]], r"prompt 0: token id 10000 is outside the vocabulary"),
        ([[5, "7"]], r"prompt 0: token id '7' is outside the vocabulary"),
        ([[5] * 1020], r"prompt 0: 1020 tokens \+ max_new_tokens 10 exceed .* context length 1024"),
    ],
)
def test_bad_prompts_fail_naming_the_prompt(engine: TransformersEngine, bad_prompts, message):
    with pytest.raises(UserError, match=message):
        engine.generate(bad_prompts, GREEDY)


@pytest.mark.parametrize(
    ("conversations", "message"),
    [
        ([[]], r"conversation 0: expected a non-empty list"),
        ([[{"role": "user", "content": "hi"}], [{"role": "robot", "content": "x"}]],
         r"conversation 1, message 0: role must be one of"),
        ([[{"role": "user"}]], r"conversation 0, message 0: content must be a string"),
    ],
)  # fmt: skip
def test_bad_conversations_fail_naming_the_message(
    engine: TransformersEngine, conversations, message
):
    with pytest.raises(UserError, match=message):
        engine.chat(conversations, GREEDY)


def test_make_engine_rejects_what_it_cannot_build(
    lively_model: PreTrainedModel, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="no model given"):
        make_engine(EngineConfig(kind="transformers"))
    with pytest.raises(UserError, match="cannot load a causal language model"):
        make_engine(EngineConfig(kind="transformers", device="cpu"), str(tmp_path / "missing"))
    with pytest.raises(UserError, match="engine.device: 'gpu9' is not a torch device"):
        make_engine(EngineConfig(kind="transformers", device="gpu9"), str(tmp_path))
    with pytest.raises(UserError, match="not from a model object"):
        make_engine(EngineConfig(kind="vllm"), lively_model)
    with pytest.raises(UserError, match="engine.base_url is not set"):
        make_engine(EngineConfig(kind="openai"), "teacher")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_engine_without_vllm_says_how_to_install(tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="install the vllm extra"):
        make_engine(EngineConfig(kind="vllm"), str(tiny_model_dir))


# ---------------------------------------------------------------- vLLM (GPU only)
@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
    reason="needs a CUDA device and vLLM",
)
def test_vllm_engine_on_gpu(tmp_path: Path) -> None:
    from rl2f.training.tiny_model import build_model, train_tokenizer

    # A head size of 64, which every vLLM attention backend supports.
    cfg = TinyModelConfig(
        vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    tokenizer = train_tokenizer(TEXTS * 20, cfg.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts = [tokenizer(text)["input_ids"] for text in TEXTS]

    engine = make_engine(
        EngineConfig(kind="vllm", gpu_memory_utilization=0.3), str(tmp_path), dtype="float16"
    )
    try:
        assert isinstance(engine, TokenEngine)
        greedy = engine.generate(prompts, GREEDY, return_logprobs=True)
        sampling = SamplingConfig(temperature=0.8, max_new_tokens=10, seed=4)
        sampled = engine.generate(prompts, sampling, return_logprobs=True)
        assert engine.generate(prompts, sampling, return_logprobs=True) == sampled
        repeated = engine.generate([prompts[1]] * 4, sampling)
        # Explicit seeds: the defaults reproduce the default call; a request keeps its seed's
        # generation wherever it sits in the call.
        defaults = [request_seed(sampling.seed, i) for i in range(len(prompts))]
        assert engine.generate(prompts, sampling, True, seeds=defaults) == sampled
        reversed_call = engine.generate(prompts[::-1], sampling, seeds=defaults[::-1])
        texts = engine.chat([[{"role": "user", "content": "Calculate 1 + 2."}]], sampling)
    finally:
        engine.close()

    assert len({tuple(g.token_ids) for g in repeated}) == 4
    assert [g.token_ids for g in reversed_call] == [g.token_ids for g in sampled[::-1]]
    assert isinstance(texts[0], str)
    for prompt, generation in zip(prompts, greedy, strict=True):
        _assert_well_formed(generation, engine.stop_ids, GREEDY.max_new_tokens)
        ids = torch.tensor([prompt + generation.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
        log_probs = torch.log_softmax(logits, dim=-1)
        chosen = log_probs.gather(-1, torch.tensor(generation.token_ids)[:, None]).squeeze(-1)
        # Greedy picks the most likely token (up to float16 noise) and reports its log-prob.
        assert torch.all(chosen >= log_probs.max(dim=-1).values - 0.05)
        assert generation.logprobs == pytest.approx(chosen.tolist(), abs=0.05)
    for prompt, generation in zip(prompts, sampled, strict=True):
        _assert_well_formed(generation, engine.stop_ids, sampling.max_new_tokens)
        expected = forward_log_probs(model, prompt, generation.token_ids, sampling.temperature)
        assert generation.logprobs == pytest.approx(expected, abs=0.05)


def _assert_well_formed(generation: Generation, stop_ids: frozenset[int], max_new: int) -> None:
    stops = [k for k, t in enumerate(generation.token_ids) if t in stop_ids]
    if generation.finish_reason == "stop":
        assert stops == [len(generation.token_ids) - 1]
    else:
        assert not stops and len(generation.token_ids) == max_new
    assert generation.logprobs is not None and len(generation.logprobs) == len(generation.token_ids)


# ---------------------------------------------------------------- OpenAI-compatible engine
def completion_body(content: str | None) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "teacher",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": content},
            }
        ],
    }


class ScriptedServer:
    """A real HTTP server on loopback that answers chat completion requests from a script of
    HTTP statuses (the last one repeats); a 200 echoes the last user message back."""

    def __init__(self, statuses: list[int], delay_s: float = 0.0, echo: bool = True) -> None:
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.echo = echo
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    server.requests.append({"path": self.path, "headers": headers, "body": body})
                    status = (
                        server.statuses.pop(0) if len(server.statuses) > 1 else server.statuses[0]
                    )
                time.sleep(server.delay_s)
                if status == 200:
                    echoed = "echo: " + body["messages"][-1]["content"]
                    payload = completion_body(echoed if server.echo else None)
                else:
                    payload = {"error": {"message": f"scripted failure {status}", "type": "test"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    # Lets the client's backoff wait 10 ms instead of half a second.
                    self.send_header("retry-after-ms", "10")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def openai_engine(url: str, **overrides: object) -> OpenAIChatEngine:
    cfg = EngineConfig(kind="openai", base_url=url, timeout_s=5.0, max_retries=2, concurrency=3)
    engine = make_engine(cfg.model_copy(update=overrides), "teacher")
    assert isinstance(engine, OpenAIChatEngine)
    return engine


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def test_openai_engine_sends_the_request_and_keeps_order(monkeypatch) -> None:
    monkeypatch.setenv("RL2F_TEST_TEACHER_KEY", "secret")
    sampling = SamplingConfig(temperature=0.3, top_p=0.9, max_new_tokens=17, seed=2)
    with ScriptedServer([200], delay_s=0.05) as server:
        engine = openai_engine(server.url, api_key_env="RL2F_TEST_TEACHER_KEY")
        try:
            texts = engine.chat([user(f"question {i}") for i in range(7)], sampling)
        finally:
            engine.close()
    assert texts == [f"echo: question {i}" for i in range(7)]
    first = next(r for r in server.requests if r["body"]["messages"] == user("question 0"))
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["authorization"] == "Bearer secret"
    body = first["body"]
    assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"]) == (
        "teacher", 0.3, 0.9, 17,
    )  # fmt: skip
    assert body["seed"] == request_seed(2, 0)


def test_openai_engine_retries_server_errors() -> None:
    with ScriptedServer([500, 200]) as server:
        engine = openai_engine(server.url)
        try:
            assert engine.chat([user("hello")], GREEDY) == ["echo: hello"]
        finally:
            engine.close()
    assert len(server.requests) == 2


def test_openai_engine_gives_up_after_its_retries() -> None:
    with ScriptedServer([503]) as server:
        engine = openai_engine(server.url, max_retries=1)
        with pytest.raises(UserError) as error:
            engine.chat([user("hello")], GREEDY)
        engine.close()
    assert str(error.value).startswith(f"{server.url}/chat/completions: HTTP 503 after 2 attempts")
    assert len(server.requests) == 2


def test_openai_engine_does_not_retry_a_bad_request() -> None:
    with ScriptedServer([400]) as server:
        engine = openai_engine(server.url)
        with pytest.raises(UserError, match=r"/v1/chat/completions: HTTP 400: .*scripted failure"):
            engine.chat([user("hello")], GREEDY)
        engine.close()
    assert len(server.requests) == 1


def test_openai_engine_rejects_a_reply_without_content() -> None:
    with ScriptedServer([200], echo=False) as server:
        engine = openai_engine(server.url)
        with pytest.raises(UserError, match=r"conversation 0: the reply has no message content"):
            engine.chat([user("a"), user("b")], GREEDY)
        engine.close()


def test_openai_engine_times_out() -> None:
    with ScriptedServer([200], delay_s=1.0) as server:
        engine = openai_engine(server.url, timeout_s=0.2, max_retries=0)
        with pytest.raises(UserError, match=r"chat/completions: no answer within 0.2 s"):
            engine.chat([user("hello")], GREEDY)
        engine.close()


def test_openai_engine_names_an_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    engine = openai_engine(url, max_retries=0)
    with pytest.raises(UserError, match=rf"^{url}/chat/completions: cannot connect"):
        engine.chat([user("hello")], GREEDY)
    engine.close()


@pytest.fixture(scope="module")
def transformers_server(tiny_model_dir: Path, tmp_path_factory) -> Iterator[str]:
    """``transformers serve`` on loopback, serving the tiny model offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    cli = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(cli), "serve", str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited: {log_path.read_text()[-2000:]}")
            try:
                if requests.get(f"{base}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not ready: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield f"{base}/v1"
    finally:
        stop_process(process, 20)


@pytest.mark.slow
def test_openai_engine_against_transformers_serve(transformers_server: str, tiny_model_dir: Path):
    cfg = EngineConfig(kind="openai", base_url=transformers_server, timeout_s=60, concurrency=2)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=6)
    engine = make_engine(cfg, str(tiny_model_dir))
    try:
        texts = engine.chat(
            [user("Calculate 1 + 2."), user("Calculate 3 + 4."), user("Calculate 5 + 6.")], sampling
        )
    finally:
        engine.close()
    assert len(texts) == 3 and all(isinstance(text, str) for text in texts)

    wrong = make_engine(cfg, "no-such-model")
    with pytest.raises(UserError, match=rf"^{transformers_server}/chat/completions: HTTP 400"):
        wrong.chat([user("Calculate 1 + 2.")], sampling)
    wrong.close()
