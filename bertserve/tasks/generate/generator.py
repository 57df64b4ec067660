"""`Generator`: text generation with a KV cache and continuous batching.

One scheduler thread owns the model. Each loop is one decoding step:

1. admit: waiting requests join while the step's token budget lasts (`max_batch_tokens` counts one token per
   running stream plus each newcomer's whole prompt) and a stream slot is free. A newcomer's prompt is run
   alone (prefill), which yields its cache and its first token (time to first token is one prefill);
2. decode: every running stream's last token goes through the model in one batch of shape (streams, 1);
3. leave: streams that hit an end token, a stop string, max_new_tokens or the context end (or whose caller
   cancelled) are answered and their cache rows dropped.

The running streams' caches live in one tensor per layer, (streams, heads, capacity, head_dim), each row
filled up to its own length. A decoding step hands the model the first max(length) positions as a
DynamicCache, with an attention mask over each row's real positions and per-row position ids, so streams of
different lengths share one forward pass; the model's cache update writes the new keys/values in place at
each row's own length in place (no copy of the cache per step; a row's stale positions between its length and
max(length) are masked). For one stream this is exactly transformers' own cached decoding, which is why greedy
output equals `model.generate(do_sample=False)` token for token.

Per-token Python work is kept off the full output: text is detokenized incrementally (a window of the last
few tokens, see IncrementalText), and greedy rows take one batched argmax per step.
"""
from __future__ import annotations

import functools
import inspect
import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from bertserve.errors import BadInput, Overloaded, TooLarge, Unavailable
from bertserve.tasks.generate.models import context_length, load_causal_lm, make_detokenizer
from bertserve.tasks.generate.sampling import SamplingParams, next_token

log = logging.getLogger("bertserve.generate")

CACHE_CHUNK = 64   # cache rows grow by this many positions at a time


@dataclass
class GeneratorConfig:
    max_streams: int = 16          # sequences decoded together
    max_batch_tokens: int = 2048   # tokens one step may feed the model (decode tokens + admitted prompts)
    max_new_tokens: int = 512      # cap on a request's max_new_tokens
    max_waiting: int = 256         # requests queued beyond the running ones, then Overloaded
    threads: int | None = None     # torch threads (None: leave torch's setting)

    def __post_init__(self):
        for name in ("max_streams", "max_batch_tokens", "max_new_tokens", "max_waiting"):
            if getattr(self, name) < 1:
                raise BadInput(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str             # "stop" (end token or stop string) or "length"

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Event:
    """What a listener hears: text deltas, then one `done` (with the Completion) or one `error`."""
    kind: str                      # "text" | "done" | "error"
    text: str = ""
    completion: Completion | None = None
    error: BaseException | None = None


class Stream:
    """A submitted request: `future` resolves to its Completion; `cancel()` frees its slot at the next step."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, listener: Callable[[Event], None] | None):
        self.prompt_ids = prompt_ids
        self.params = params
        self.listener = listener
        self.future: Future = Future()
        self.cancelled = False
        self.finished = False
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        # decoding state (scheduler thread only)
        self.output: list[int] = []
        self.emitted = ""
        self.length = 0            # positions in this stream's cache
        self.gen: torch.Generator | None = None
        self.seen: torch.Tensor | None = None
        self.text: IncrementalText | None = None

    def cancel(self):
        self.cancelled = True

    def _tell(self, event: Event):
        if self.listener is not None:
            try:
                self.listener(event)
            except Exception:   # a listener that broke (closed loop, ...) must not stop the other streams
                log.exception("generate listener failed; cancelling its stream")
                self.cancelled = True


class Generator:
    def __init__(self, model, tokenizer=None, config: GeneratorConfig | None = None, metrics=None,
                 **config_fields):
        """`model`: a folder, a .gguf file, a packaged model name ("smollm2") or a loaded model. `metrics`: a
        bertserve.engine.metrics.Metrics the server's /metrics and /status read (engine label "generate")."""
        self.config = config or GeneratorConfig(**config_fields)
        self.metrics = metrics
        if tokenizer is None:
            model, tokenizer = load_causal_lm(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.detokenize = make_detokenizer(tokenizer)
        self.context = context_length(model)
        # transformers 5.2x renamed forward's `past_key_values` to `cache` (the old name still works, warning)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # a prompt needs the logits of its last position only (the output layer is most of a small model)
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.stop_ids = tuple(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self.name = Path(str(getattr(model.config, "name_or_path", "") or type(model).__name__)).name
        self._waiting: queue.SimpleQueue[Stream] = queue.SimpleQueue()
        self._waiting_count = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._head: Stream | None = None   # the oldest waiting request, taken off the queue to be looked at
        self._running: list[Stream] = []
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self.steps = 0
        self.cancelled = 0   # streams whose caller went away before they finished
        self._thread = threading.Thread(target=self._loop, name="bertserve-generate", daemon=True)
        self._thread.start()

    # ---- requests ----

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_prompt(self, prompt) -> list[int]:
        """A prompt string (tokenized as the model was trained: start token where the tokenizer adds one) or
        a list of token ids."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        elif isinstance(prompt, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
            ids = list(prompt)
            vocab = len(self.tokenizer)
            if any(not 0 <= i < max(vocab, self.model.config.vocab_size) for i in ids):
                raise BadInput(f"token ids must be in [0, {vocab})")
        else:
            raise BadInput("a prompt is a string or a list of token ids")
        if not ids:
            raise BadInput("prompt is empty (it has no tokens); send some text")
        return ids

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        if not self.has_chat_template:
            raise BadInput(f"model {self.name} has no chat template: use /v1/completions with a plain prompt")
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # the template rejected the messages (roles, order)
            raise BadInput(f"messages do not fit the model's chat template: {e}") from None
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check(self, prompt_ids: list[int], params: SamplingParams):
        if len(prompt_ids) >= self.context:
            raise BadInput(f"prompt has {len(prompt_ids)} tokens; the model's context is {self.context} "
                           "(prompt and output together): shorten it")
        if params.max_new_tokens > self.config.max_new_tokens:
            raise BadInput(f"max_new_tokens {params.max_new_tokens} is over this server's cap of "
                           f"{self.config.max_new_tokens}")
        if len(prompt_ids) + 1 > self.config.max_batch_tokens:
            raise TooLarge(f"prompt has {len(prompt_ids)} tokens, over this server's step budget of "
                           f"{self.config.max_batch_tokens}")

    def submit(self, prompt, listener: Callable[[Event], None] | None = None, **params) -> Stream:
        """Queue one prompt; returns at once. `params` are SamplingParams fields."""
        ids = self.encode_prompt(prompt)
        params.setdefault("max_new_tokens", min(SamplingParams.max_new_tokens, self.config.max_new_tokens))
        options = SamplingParams(**params)
        options.stop_ids = () if options.ignore_eos else self.stop_ids
        self.check(ids, options)
        stream = Stream(ids, options, listener)
        with self._lock:
            if self._closing:
                raise Unavailable("generator is shutting down")
            if self._waiting_count >= self.config.max_waiting:
                raise Overloaded(f"{self._waiting_count} generation requests are waiting (limit "
                                 f"{self.config.max_waiting}); retry later")
            self._waiting_count += 1
        self._waiting.put(stream)
        self._wake.set()
        return stream

    def generate(self, prompts, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, stop=(), seed: int | None = None,
                 timeout: float | None = None, **more) -> list[Completion]:
        """Complete each prompt (a string or a list of them); prompts are decoded together. With a seed,
        prompt i samples with seed + i, so a list gives varied but reproducible texts."""
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        if not prompts:
            raise BadInput("no prompts given")
        streams = [self.submit(p, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, repetition_penalty=repetition_penalty, stop=stop,
                               seed=None if seed is None else seed + i, **more)
                   for i, p in enumerate(prompts)]
        return [s.future.result(timeout) for s in streams]

    def stream(self, prompt, **params) -> Iterator[str]:
        """Text deltas of one prompt as they are decoded (the CLI's `bertserve generate`)."""
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        handle = self.submit(prompt, listener=events.put, **params)
        try:
            while True:
                event = events.get()
                if event.kind == "text":
                    yield event.text
                elif event.kind == "error":
                    raise event.error
                else:
                    return
        finally:
            handle.cancel()

    def describe(self) -> dict:
        return {"kind": "generate", "name": self.name, "architecture": type(self.model).__name__,
                "parameters": self.model.num_parameters(), "context": self.context,
                "vocab_size": len(self.tokenizer), "chat_template": self.has_chat_template,
                "running": len(self._running), "waiting": self._waiting_count, "steps": self.steps,
                "cancelled": self.cancelled,
                "max_streams": self.config.max_streams, "max_batch_tokens": self.config.max_batch_tokens,
                "max_new_tokens": self.config.max_new_tokens}

    def close(self, timeout: float | None = 30):
        """Refuse new requests, finish the accepted ones (up to `timeout` s), stop the thread."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            for s in list(self._running):
                s.cancel()
            self._thread.join(5)

    # ---- the scheduler ----

    def _loop(self):
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        with torch.inference_mode():
            while True:
                if not self._running and self._waiting_count == 0:
                    if self._closing:
                        return
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                try:
                    self._step()
                except Exception as e:   # a model failure fails the streams in flight, not the server
                    log.exception("generation step failed")
                    for s in self._running:
                        self._fail(s, e)
                    self._running, self._keys, self._values = [], [], []

    def _step(self):
        started = time.perf_counter()
        prefilled = self._admit()
        self._drop_finished()
        decoded = len(self._running)
        if self._running:
            self._decode()
            self._drop_finished()
        self.steps += 1
        if self.metrics is not None:   # a step is this engine's batch: its items are the streams it advanced
            self.metrics.observe_batch("generate", decoded, decoded + prefilled, time.perf_counter() - started)

    def _admit(self) -> int:
        """Prefill waiting requests while the step's budget lasts; returns the prompt tokens run."""
        budget = self.config.max_batch_tokens - len(self._running)
        prefilled = 0
        while len(self._running) < self.config.max_streams and self._waiting_count:
            stream = self._peek_waiting()
            if stream.cancelled:
                self._take_waiting()
                self._fail(stream, None)
                continue
            if len(stream.prompt_ids) > budget and self._running:
                break   # waits for the next step; an idle generator always takes one
            self._take_waiting()
            budget -= len(stream.prompt_ids)
            prefilled += len(stream.prompt_ids)
            try:
                self._prefill(stream)
            except Exception as e:
                log.exception("prefill failed")
                self._fail(stream, e)
        return prefilled

    def _peek_waiting(self) -> Stream:
        if self._head is None:
            self._head = self._waiting.get()
        return self._head

    def _take_waiting(self) -> Stream:
        stream = self._peek_waiting()
        self._head = None
        with self._lock:
            self._waiting_count -= 1
        return stream

    def _prefill(self, stream: Stream):
        from transformers import DynamicCache

        ids = torch.tensor([stream.prompt_ids])
        cache = DynamicCache()
        out = self.model(input_ids=ids, use_cache=True, **self._last_only, **{self._cache_arg: cache})
        stream.length = ids.shape[1]
        stream.gen = stream.params.torch_generator()
        stream.seen = torch.tensor(stream.prompt_ids)
        stream.text = IncrementalText(self.detokenize)
        self._append_rows(cache)
        self._running.append(stream)
        self._accept(stream, out.logits[0, -1].float())
        stream.first_token_at = time.perf_counter()

    def _append_rows(self, cache):
        """Add one prefilled stream's cache as a new row of the running streams' cache tensors."""
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        if not self._keys:
            cap = _round_up(layers[0][0].shape[-2] + 1)
            self._keys = [_resized(k, cap) for k, _ in layers]
            self._values = [_resized(v, cap) for _, v in layers]
            return
        cap = max(self._keys[0].shape[-2], _round_up(layers[0][0].shape[-2] + 1))
        self._grow(cap)
        self._keys = [torch.cat([K, _resized(k, cap)]) for K, (k, _) in zip(self._keys, layers)]
        self._values = [torch.cat([V, _resized(v, cap)]) for V, (_, v) in zip(self._values, layers)]

    def _grow(self, capacity: int):
        if capacity > self._keys[0].shape[-2]:
            self._keys = [_resized(k, capacity) for k in self._keys]
            self._values = [_resized(v, capacity) for v in self._values]

    def _decode(self):
        running = self._running
        lengths = torch.tensor([s.length for s in running])
        longest = int(lengths.max())
        self._grow(_round_up(longest + 1))
        # each row's new keys/values go to its own length (rows all as long as the longest: a plain slice)
        at = None if bool((lengths == longest).all()) else lengths
        cache = _slot_cache(self._keys, self._values, longest, at)
        mask = torch.arange(longest + 1)[None, :] <= lengths[:, None]
        tokens = torch.tensor([[s.output[-1]] for s in running])
        out = self.model(input_ids=tokens, attention_mask=mask.long(), position_ids=lengths[:, None],
                         use_cache=True, **{self._cache_arg: cache})
        logits = out.logits[:, -1].float()
        picks = logits.argmax(-1).tolist()   # one batched argmax serves every greedy row
        for i, s in enumerate(running):
            s.length += 1
            self._accept(s, logits[i], picks[i])

    def _accept(self, stream: Stream, logits: torch.Tensor, argmax: int | None = None):
        """Choose the stream's next token, tell its listener the new text, and mark it finished if it is.
        `argmax`: the row's argmax when already computed (greedy without a repetition penalty takes it)."""
        if stream.cancelled:
            return
        p = stream.params
        if argmax is not None and p.greedy and p.repetition_penalty == 1.0:
            token = argmax
        else:
            token = next_token(logits, stream.seen, p, stream.gen)
        if p.repetition_penalty != 1.0:
            stream.seen = torch.cat([stream.seen, torch.tensor([token])])
        reason = None
        if token in p.stop_ids:
            reason = "stop"
        else:
            stream.output.append(token)
            if len(stream.output) >= p.max_new_tokens or stream.length + 1 >= self.context:
                reason = "length"
        # the last text is decoded whole once (a held-back half character is shown as decoded)
        text = self.detokenize(stream.output) if reason else stream.text.push(stream.output)
        if p.stop:
            hits = [i for i in (text.find(s) for s in p.stop) if i >= 0]
            if hits:
                text, reason = text[: min(hits)], "stop"
        shown = text if reason else _safe_prefix(text, p.stop)
        if shown.startswith(stream.emitted) and len(shown) > len(stream.emitted):
            stream._tell(Event("text", shown[len(stream.emitted):]))
            stream.emitted = shown
        if reason:
            done = Completion(text, list(stream.output), len(stream.prompt_ids), reason)
            stream.finished = True
            self._observe(stream, failed=False)
            _resolve(stream.future, done)
            stream._tell(Event("done", completion=done))

    def _drop_finished(self):
        keep = [i for i, s in enumerate(self._running) if not (s.finished or s.cancelled)]
        if len(keep) == len(self._running):
            return
        for s in self._running:
            if s.cancelled and not s.future.done():
                self._fail(s, None)
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._keys, self._values = [], []
            return
        index = torch.tensor(keep)
        self._keys = [k.index_select(0, index) for k in self._keys]
        self._values = [v.index_select(0, index) for v in self._values]

    def _observe(self, stream: Stream, failed: bool):
        if self.metrics is not None:
            self.metrics.observe_engine_request("generate", time.perf_counter() - stream.submitted, failed)

    def _fail(self, stream: Stream, error: BaseException | None):
        """End a stream that will not complete: cancelled (error None) or failed."""
        if error is None:
            self.cancelled += 1
            error = Unavailable("request cancelled")
        self._observe(stream, failed=error is not None and not stream.cancelled)
        _resolve(stream.future, error=error)
        stream._tell(Event("error", error=error))


class IncrementalText:
    """The text of a growing token list, decoding only a window of its last tokens per step: the text of
    window + new tokens, less the window's own text, is what the new tokens add (the window carries the
    context a tokenizer's spacing rules look at). A delta ending in a half character (U+FFFD, byte-level
    vocabularies) waits for the next token."""

    def __init__(self, detokenize: Callable[[list[int]], str]):
        self.detokenize = detokenize
        self.text = ""
        self.start = 0   # the window: tokens [start, read) are already in self.text
        self.read = 0

    def push(self, ids: list[int]) -> str:
        if len(ids) == self.read:
            return self.text
        window = self.detokenize(ids[self.start: self.read]) if self.read > self.start else ""
        longer = self.detokenize(ids[self.start:])
        if longer.endswith("\ufffd") or not longer.startswith(window):
            return self.text
        self.text += longer[len(window):]
        self.start, self.read = self.read, len(ids)
        return self.text


@functools.lru_cache(maxsize=1)
def _in_place_layer():
    from transformers.cache_utils import DynamicLayer

    class InPlaceLayer(DynamicLayer):
        """Positions [0, length) of preallocated (rows, heads, capacity, dim) tensors; `update` writes the
        step's new keys/values in place (at `length`, or at each row's own position `at`) instead of
        concatenating a copy of the whole cache."""

        def __init__(self, k, v, length, at=None):
            super().__init__()
            self.buffer_k, self.buffer_v, self.length, self.at = k, v, length, at
            self.keys, self.values = k[:, :, :length], v[:, :, :length]
            self.device, self.is_initialized = k.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            n = self.length + key_states.shape[-2]
            if self.at is None:
                self.buffer_k[:, :, self.length:n] = key_states
                self.buffer_v[:, :, self.length:n] = value_states
            else:   # one new position per row (a decoding step)
                rows = torch.arange(len(self.at))
                self.buffer_k[rows, :, self.at] = key_states[:, :, 0]
                self.buffer_v[rows, :, self.at] = value_states[:, :, 0]
            self.keys, self.values = self.buffer_k[:, :, :n], self.buffer_v[:, :, :n]
            return self.keys, self.values

    return InPlaceLayer


def _slot_cache(keys: list[torch.Tensor], values: list[torch.Tensor], length: int, at=None):
    """A DynamicCache over the first `length` positions of the running streams' cache tensors (which have
    room for one more position: see _grow); `at`: each row's position for the step's new keys/values."""
    from transformers import DynamicCache

    layer = _in_place_layer()
    cache = DynamicCache()
    cache.layers = [layer(k, v, length, at) for k, v in zip(keys, values)]
    return cache


def _round_up(n: int) -> int:
    return -(-n // CACHE_CHUNK) * CACHE_CHUNK


def _resized(t: torch.Tensor, capacity: int) -> torch.Tensor:
    """`t` (rows, heads, length, dim) with its length dimension zero-padded (or kept) to `capacity`."""
    if t.shape[-2] == capacity:
        return t.contiguous()
    out = t.new_zeros(*t.shape[:-2], capacity, t.shape[-1])
    out[:, :, : t.shape[-2]] = t
    return out


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """`text` less what might still turn into a stop string or is a half-decoded character."""
    cut = len(text)
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                cut = min(cut, len(text) - n)
                break
    text = text[:cut]
    return text.rstrip("\ufffd")


def _resolve(future: Future, result=None, error: BaseException | None = None):
    try:
        future.set_exception(error) if error is not None else future.set_result(result)
    except InvalidStateError:
        pass
