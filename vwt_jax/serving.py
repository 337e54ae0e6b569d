"""Many sampling requests through one resident LlamaGen GPT program.

A `Sampler` keeps a GPT's params on the devices and one compiled
`autoregressive.row_program` for a fixed batch size and the static settings
(num_tokens, top_k, whether top-p and classifier-free guidance run). Requests
(a class id, a prompt or caption features, and their own seed, cfg_scale,
cfg_interval, temperature and top_p) fill batches of that size; the last one
is padded with copies of its first row, discarded. Each result depends on its
request alone: row b draws from `jax.random.key(seed)` with its own settings,
exactly what `generate` gives for that request alone, whichever batch and
slot it lands in. A request asking for a static setting the program was not
compiled with (another top_k, top-p on a program without it, guidance on one
without the null rows) is refused: one Sampler is one program, and Samplers
over the same params share them.

  sampler = Sampler.from_pretrained("llamagen-c2i-b-256", batch_size=16)
  for result in sampler.run(Request(c, seed=i, cfg_scale=4.0) for i, c in enumerate(ids)):
    save(result.image)

`submit(request)` returns a `Handle` at once; a full batch runs as its last
request is submitted, and `Handle.result()` (or `flush()`) runs a partial one.
Calls may come from several threads (a web front end's workers): batches run
one at a time. For such a front end, `max_wait_s` makes a partial batch wait
for companions: it runs when full or when its first request has waited that
long, and `Handle.result()` waits for it instead of running it at once.
"""

import collections
import dataclasses
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from absl import logging
import jax
from jax.sharding import Mesh
import numpy as np

from vwt_jax import sample as sample_lib
from vwt_jax.core import sharding as sharding_lib
from vwt_jax.families import gpt as gpt_family
from vwt_jax.families import pretrained
from vwt_jax.models import gpt as gpt_lib
from vwt_jax.sampling import autoregressive

# The settings each row of the program takes, and their dtypes.
ROW_SETTINGS = {"cfg_scale": np.float32, "cfg_interval": np.int32, "temperature": np.float32,
                "top_p": np.float32}
_DEFAULTS = {"cfg_scale": 1.0, "cfg_interval": -1, "temperature": 1.0, "top_p": 1.0}
# jax.random.key takes the seed as an int32 here (vmapped over the batch).
_MAX_SEED = 2**31 - 1
# int32 tokens (batch, num_tokens) -> uint8 images (batch, H, W, 3).
Decode = Callable[[np.ndarray], np.ndarray]
# Prompts -> (left-padded caption features (N, T, D), mask (N, T)).
EncodePrompts = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Request:
  """One image to sample.

  `condition`: a class id (c2i); a prompt, or caption features (T, D) with
  their `mask` (T,) of real slots (default all real), for t2i. Settings left
  None take the Sampler's defaults; `top_k`, if given, must be the Sampler's.
  """
  condition: Union[int, str, np.ndarray]
  seed: int = 0
  cfg_scale: Optional[float] = None
  cfg_interval: Optional[int] = None
  temperature: Optional[float] = None
  top_p: Optional[float] = None
  top_k: Optional[int] = None
  mask: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class Result:
  request: Request
  tokens: np.ndarray  # int32 (num_tokens,)
  image: Optional[np.ndarray]  # uint8 (H, W, 3) when the Sampler has a decoder
  latency_s: float  # from submit to the result's batch being done


class Handle:
  """A submitted request's pending `Result`."""

  def __init__(self, sampler: "Sampler"):
    self._sampler = sampler
    self._result: Optional[Result] = None
    self._error: Optional[Exception] = None
    self._finished = threading.Event()
    self._submitted = time.perf_counter()

  def done(self) -> bool:
    return self._finished.is_set()

  def result(self, timeout: Optional[float] = None) -> Result:
    """The result; runs the partial batch this request waits in, if any.

    With the Sampler's `max_wait_s`, waits instead for its batch to fill or
    time out (at most `timeout` seconds, then TimeoutError). Raises what its
    batch raised (e.g. the decoder's error).
    """
    if not self.done():
      if self._sampler.max_wait_s is None:
        self._sampler.flush(self)
      elif not self._finished.wait(timeout):
        raise TimeoutError(f"no result after {timeout} s: its batch has not run yet")
    if self._error is not None:
      raise self._error
    return self._result


class Sampler:
  """A LlamaGen GPT's params and compiled sampler, resident, for a stream of requests."""

  def __init__(self, config: gpt_lib.GPTConfig, params: Any, *, batch_size: int,
               num_tokens: Optional[int] = None, top_k: int = 0, use_top_p: bool = False,
               cfg: Optional[bool] = None, defaults: Optional[dict] = None,
               decode: Optional[Decode] = None, encode_prompts: Optional[EncodePrompts] = None,
               mesh: Optional[Mesh] = None, rules=None, max_wait_s: Optional[float] = None):
    """
    Args:
      config, params: the GPT and its `params` collection.
      batch_size: rows per compiled call (a multiple of the mesh's data-parallel devices).
      num_tokens: tokens per image (default block_size).
      top_k: the top-k filter compiled in (0: off).
      use_top_p: compile the nucleus filter in (requests with top_p < 1 need it).
      cfg: run the [cond ; null] rows of classifier-free guidance (default: when
        the GPT has a null condition); requests with cfg_scale > 1 need it.
      defaults: cfg_scale, cfg_interval, temperature, top_p of requests that leave
        them None (default 1, -1, 1, 1).
      decode: tokens to pixels (the tokenizer's); results then hold images.
      encode_prompts: the caption encoder of a t2i GPT, for prompt requests.
      mesh, rules: as `autoregressive.generate`'s.
      max_wait_s: seconds a partial batch waits for more requests, counted from
        its first; then a background thread runs it. None: partial batches run
        on `Handle.result()` or `flush()`.
    """
    num_tokens = config.block_size if num_tokens is None else num_tokens
    cfg = config.has_null_condition if cfg is None else cfg
    self._rules = gpt_family.sampling_rules(config)
    self.defaults = {**_DEFAULTS, **(defaults or {})}
    for name, value in (("batch_size", batch_size), ("num_tokens", num_tokens), ("top_k", top_k)):
      if not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r}: expected an int")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}: expected >= 1 rows per call")
    if not 1 <= num_tokens <= config.block_size:
      raise ValueError(f"num_tokens={num_tokens}: expected 1..block_size={config.block_size}")
    if not self._rules["top_k"][0](top_k):
      raise ValueError(f"top_k={top_k}: expected {self._rules['top_k'][1]}")
    if cfg and not config.has_null_condition:
      raise ValueError("cfg=True needs a null class: this GPT's class_dropout_prob is 0")
    if unknown := set(self.defaults) - set(ROW_SETTINGS):
      raise ValueError(f"defaults {sorted(unknown)}: expected some of {sorted(ROW_SETTINGS)}")
    if max_wait_s is not None and not (isinstance(max_wait_s, (int, float)) and max_wait_s >= 0):
      raise ValueError(f"max_wait_s={max_wait_s!r}: expected None or seconds >= 0")
    if decode is not None and num_tokens != config.block_size:
      raise ValueError(f"decode needs whole images: num_tokens={num_tokens} != block_size="
                       f"{config.block_size}")
    if mesh is not None and batch_size % sharding_lib.data_parallel_size(mesh):
      raise ValueError(f"batch_size={batch_size} must divide over the "
                       f"{sharding_lib.data_parallel_size(mesh)} data-parallel devices")
    self.config, self.batch_size, self.num_tokens = config, batch_size, num_tokens
    self.top_k, self.use_top_p, self.cfg = top_k, use_top_p, cfg
    self.max_wait_s = max_wait_s
    self.batches_run = 0  # Compiled calls so far, partial ones included.
    self._decode, self._encode_prompts = decode, encode_prompts
    self._program, param_shardings = autoregressive.row_program(
        config, num_tokens=num_tokens, cfg=cfg, top_k=top_k, use_top_p=use_top_p, mesh=mesh,
        rules=rules)
    # Placed once: every call takes them where they are.
    self._params = jax.device_put(params, param_shardings)
    row_sharding = None if mesh is None else sharding_lib.batch_sharding(mesh)
    self._keys = jax.jit(jax.vmap(jax.random.key), out_shardings=row_sharding)
    for name in ROW_SETTINGS:
      self._check_setting(name, self.defaults[name], "defaults")
    self._pending: list[tuple[Request, Handle]] = []
    self._lock = threading.Condition()
    # Runs timed-out partial batches; lives while requests wait (`max_wait_s`).
    self._timer: Optional[threading.Thread] = None

  @classmethod
  def from_pretrained(cls, name: str, *, batch_size: int = 8, resize: int = 0,
                      caption_encoder_dir: str = "", mesh: Optional[Mesh] = None,
                      **overrides) -> "Sampler":
    """A Sampler of released weights by name (docs/pretrained.md), loaded as
    `python -m vwt_jax.sample --pretrained NAME` loads them, with its tokenizer
    (images resized to `resize` px if > 0) and for t2i its caption encoder.

    Defaults come from the release's `config.sampling` (its top_k is compiled
    in, top-p when its top_p < 1); `overrides` are the constructor's keywords.
    """
    release = pretrained.get(name)

    def check(gen):
      if gen.config.family != "gpt":
        raise ValueError(f"{name} is a {gen.description}: the Sampler serves LlamaGen GPTs")

    gen, params = sample_lib.load(pretrained.config(name), release.checkpoint, mesh=mesh,
                                  check=check)
    settings = gen.config.sampling
    kwargs = dict(top_k=int(settings.top_k), use_top_p=settings.top_p < 1,
                  defaults={k: settings[k] for k in ROW_SETTINGS})
    tok = gen.tokenizer()
    kwargs["decode"] = lambda tokens: tok.pictures(tokens, resize)
    if not gen.conditional_on_class:
      encoder = sample_lib.caption_encoder(gen, model_dir=caption_encoder_dir)
      kwargs["encode_prompts"] = lambda prompts: sample_lib.caption_conditions(encoder, prompts)
    return cls(gen.cfg, params, batch_size=batch_size, mesh=gen.mesh, rules=gen.rules,
               **{**kwargs, **overrides})

  def _check_setting(self, name: str, value: Any, where: str) -> None:
    test, allowed = self._rules[name]
    if not test(value):
      raise ValueError(f"{where}.{name}={value!r}: expected {allowed}")
    if name == "cfg_scale" and value > 1 and not self.cfg:
      raise ValueError(f"{where}.cfg_scale={value}: this Sampler runs no guidance (cfg=False); "
                       "use one made with cfg=True")
    if name == "top_p" and value < 1 and not self.use_top_p:
      raise ValueError(f"{where}.top_p={value}: this Sampler has no top-p filter compiled in; "
                       "use one made with use_top_p=True")

  def _check(self, request: Request) -> None:
    """Raises ValueError naming the first field of `request` this Sampler cannot serve."""
    if not isinstance(request, Request):
      raise ValueError(f"request {request!r}: expected a serving.Request")
    c, config = request.condition, self.config
    if config.model_type == "c2i":
      if not isinstance(c, (int, np.integer)) or not 0 <= c < config.num_classes:
        raise ValueError(f"Request.condition={c!r}: expected a class id 0.."
                         f"{config.num_classes - 1}")
    elif isinstance(c, str):
      if self._encode_prompts is None:
        raise ValueError("Request.condition is a prompt but this Sampler has no encode_prompts: "
                         "give caption features (T, D) instead")
    else:
      shape = (config.cls_token_num, config.caption_dim)
      if np.shape(c) != shape:
        raise ValueError(f"Request.condition {np.shape(c)}: expected a prompt or caption "
                         f"features {shape}")
      if request.mask is not None and np.shape(request.mask) != shape[:1]:
        raise ValueError(f"Request.mask {np.shape(request.mask)}: expected {shape[:1]}")
    if not isinstance(request.seed, (int, np.integer)) or not 0 <= request.seed <= _MAX_SEED:
      raise ValueError(f"Request.seed={request.seed!r}: expected an int 0..{_MAX_SEED}")
    if request.top_k is not None and request.top_k != self.top_k:
      raise ValueError(f"Request.top_k={request.top_k}: this Sampler is compiled for "
                       f"top_k={self.top_k}; use a Sampler made with top_k={request.top_k}")
    for name in ROW_SETTINGS:
      self._check_setting(name, self._setting(request, name), "Request")

  def _setting(self, request: Request, name: str) -> Any:
    value = getattr(request, name)
    return self.defaults[name] if value is None else value

  def submit(self, request: Request) -> Handle:
    """Queues `request` (checked now); runs the batch if this fills it."""
    self._check(request)
    handle = Handle(self)
    with self._lock:
      self._pending.append((request, handle))
      if len(self._pending) == self.batch_size:
        self._run_pending()
      elif self.max_wait_s is not None and self._timer is None:
        self._timer = threading.Thread(target=self._run_when_due, daemon=True,
                                       name="Sampler.max_wait_s")
        self._timer.start()
    return handle

  def flush(self, handle: Optional[Handle] = None) -> None:
    """Runs the waiting requests as one padded batch (if `handle`, one of them, waits)."""
    with self._lock:
      if self._pending and (handle is None or not handle.done()):
        self._run_pending()

  def run(self, requests: Iterable[Request]) -> Iterator[Result]:
    """The results of `requests`, in order, each as soon as its batch is done."""
    waiting = collections.deque()
    for request in requests:
      waiting.append(self.submit(request))
      while waiting and waiting[0].done():
        yield waiting.popleft().result()
    # No more companions are coming: the last batch need not wait out `max_wait_s`.
    self.flush()
    while waiting:
      yield waiting.popleft().result()

  def warmup(self) -> float:
    """Compiles the program (and the decoder) with one padded batch; its seconds."""
    start = time.perf_counter()
    condition = 0 if self.config.model_type == "c2i" else np.zeros(
        (self.config.cls_token_num, self.config.caption_dim), np.float32)
    handle = self.submit(Request(condition))
    self.flush()
    handle.result()
    return time.perf_counter() - start

  def _conditions(self, requests: list[Request]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(cond, emb_mask) of the batch: labels (B,), or caption features (B, T, D) and mask."""
    if self.config.model_type == "c2i":
      return np.asarray([r.condition for r in requests], np.int32), None
    prompts = [r.condition for r in requests if isinstance(r.condition, str)]
    encoded = iter(zip(*self._encode_prompts(prompts))) if prompts else iter(())
    cond, mask = [], []
    for r in requests:
      if isinstance(r.condition, str):
        features, m = next(encoded)
      else:
        features = r.condition
        m = np.ones(self.config.cls_token_num, bool) if r.mask is None else r.mask
      cond.append(np.asarray(features, np.float32))
      mask.append(np.asarray(m, bool))
    return np.stack(cond), np.stack(mask)

  def _run_when_due(self) -> None:
    """The `max_wait_s` thread: runs each partial batch when its first request has
    waited that long (a full one runs at submit); ends when nothing waits."""
    with self._lock:
      while self._pending:
        wait = self._pending[0][1]._submitted + self.max_wait_s - time.perf_counter()
        if wait > 0:
          self._lock.wait(wait)
          continue
        try:
          self._run_pending()
        except Exception as e:  # Each request of the batch holds the error.
          logging.warning("a partial batch run after max_wait_s failed: %r", e)
      self._timer = None

  def _run_pending(self) -> None:
    """Samples the pending requests (under the lock), padded to the batch size."""
    pending, self._pending = self._pending, []
    self._lock.notify_all()  # A waiting `max_wait_s` thread re-reads the queue.
    self.batches_run += 1
    requests = [r for r, _ in pending]
    rows = requests + [requests[0]] * (self.batch_size - len(requests))

    def pad(x):
      return None if x is None else np.concatenate(
          [x, np.repeat(x[:1], self.batch_size - len(x), axis=0)])

    try:
      cond, emb_mask = map(pad, self._conditions(requests))
      keys = self._keys(np.asarray([r.seed for r in rows], np.int32))
      settings = [np.asarray([self._setting(r, name) for r in rows], dtype)
                  for name, dtype in ROW_SETTINGS.items()]
      tokens = np.asarray(self._program(self._params, cond, emb_mask, keys, *settings))
      images = None if self._decode is None else self._decode(tokens)
    except Exception as e:
      # Every request of the batch fails with it, not only the submitter's.
      for _, handle in pending:
        handle._error = e
        handle._finished.set()
      raise
    done = time.perf_counter()
    for i, (request, handle) in enumerate(pending):
      handle._result = Result(request, tokens[i], None if images is None else images[i],
                              done - handle._submitted)
      handle._finished.set()
