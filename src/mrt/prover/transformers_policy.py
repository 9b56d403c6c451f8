"""mu through a transformers model: prefill each prompt once, branch the samples from its cached keys and values."""

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import DynamicCache, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer
from trl.models.utils import unwrap_model_for_generation

from mrt.prover.base import (
    check_answers,
    cut_at_eos,
    draw_seeds,
    isolated_rng,
    left_pad,
    max_over_ranks,
    own_generator,
)
from mrt.tokens import eos_ids


class TransformersProver:
    """mu through a transformers model: the trainer's own policy (no second copy) or a model of its own.

    `model_context()` enters whatever the model needs to generate and yields it (the trainer passes TRL's
    unwrap-for-generation, which gathers ZeRO-3 parameters; a plain model needs nothing). All requests of a call
    go through one context, in chunks of at most `batch_size` sequences. Chunks are cut from the prompts in token
    order, so the prefixes of one completion sit in the same chunk and share their prefill. `generate` reads each
    prompt once and branches its samples from the cached keys and values; `likelihood` is one teacher-forced pass
    per chunk. With an `accelerator`, every rank makes the same number of model calls (a rank with fewer chunks
    runs a tiny dummy chunk) so that ZeRO-3's collective parameter gathers stay in step. Inside `reusing(...)`,
    prompts that begin with already generated rows take those rows' keys and values instead of reading them.
    Sampling draws from the prover's own generator (seeded once with `seed`): each `generate` call runs inside
    `isolated_rng`, seeded from it, so the process's global RNG is left as it was.
    """

    def __init__(self, model_context, tokenizer, eos: set[int], generation_config: GenerationConfig,
                 batch_size: int = 64, accelerator=None, device=None, seed: int = 0):
        self.model_context, self.tokenizer, self.eos = model_context, tokenizer, set(eos)
        self.rng = own_generator(seed)
        self.generation_config, self.batch_size, self.accelerator = generation_config, batch_size, accelerator
        self.device = device if device is not None else accelerator.device
        self.prefill_tokens = 0  # tokens read by prefill passes (a counter for benchmarks)
        self._known: list[tuple[list[int], list]] = []  # (tokens, per-layer keys and values) already computed

    @contextmanager
    def reusing(self, sequences: torch.Tensor, prompt_width: int, cache) -> "Iterator[None]":
        """Within the block, prompts that begin with a row of `sequences` (left-padded prompts of `prompt_width`
        tokens, then what was generated) take those tokens' keys and values from `cache` instead of reading them:
        the cache `generate` returned for `sequences`, computed by the same weights. A cache that does not keep
        every position (sliding window, static), or whose rows are not the rows of `sequences` (beam search keeps
        batch x beams rows), is not used."""
        layers = getattr(cache, "layers", [None])
        if cache is None or not all(type(layer) is DynamicLayer and getattr(layer, "keys", None) is not None
                                    and layer.keys.shape[0] == len(sequences) for layer in layers):
            yield
            return
        length = cache.get_seq_length()
        known = []
        for i, row in enumerate(sequences[:, :length].tolist()):
            start = next((k for k, t in enumerate(row[:prompt_width]) if t != self._pad_id), prompt_width)
            layers = [(layer.keys[i, :, start:length], layer.values[i, :, start:length]) for layer in cache.layers]
            known.append((row[start:length], layers))
        before, self._known = self._known, self._known + known
        try:
            yield
        finally:
            self._known = before

    @classmethod
    def from_trainer(cls, trainer) -> "TransformersProver":
        args = trainer.args

        @contextmanager
        def model_context():
            with (
                unwrap_model_for_generation(
                    trainer.model_wrapped, trainer.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation,
                    generation_kwargs=trainer.generation_kwargs,
                    gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
                ) as model,
                torch.no_grad(),
                trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
            ):
                yield model

        return cls(model_context, trainer._tokenizer, eos_ids(trainer._tokenizer, trainer.eos_token_ids),
                   trainer.generation_config, args.prover_batch_size, trainer.accelerator,
                   seed=args.seed + trainer.accelerator.process_index)  # each rank its own draws

    @classmethod
    def for_model(cls, model, tokenizer, batch_size: int = 64, seed: int = 0) -> "TransformersProver":
        """mu = a model of its own (evaluation, MRT-STaR): plain sampling, temperature set per call."""
        declared = model.generation_config.eos_token_id
        ends = [declared] if isinstance(declared, int) else list(declared or [])
        ends = sorted({*ends, tokenizer.eos_token_id} - {None})
        config = GenerationConfig(do_sample=True, top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=ends or None)
        eos = eos_ids(tokenizer, ends)

        @contextmanager
        def model_context():
            with torch.no_grad():
                yield model

        return cls(model_context, tokenizer, eos, config, batch_size, device=model.device, seed=seed)

    def generate(self, prompts: list[list[int]], num_samples: int, max_tokens: int, temperature: float,
                 stop: list[str] | None, seed: int | None = None) -> list[list[list[int]]]:
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens, config.num_return_sequences = max_tokens, 1
        config.num_beams = 1  # mu's answers are samples (or greedy), one path each, even when rollouts use beams
        # A static or other preset cache cannot take the branched cache passed as past_key_values.
        config.cache_implementation = None
        if temperature > 0:
            config.temperature, config.do_sample = temperature, True
        else:
            config.do_sample, config.temperature, config.top_p, config.top_k = False, None, None, None
        dummy = copy.deepcopy(config)
        dummy.max_new_tokens = 1
        per_call = max(1, self.batch_size // num_samples)
        call_seed = seed if seed is not None else draw_seeds(self.rng, 1)[0]  # a given seed: the draws as before

        def call(model, chunk: list[int] | None) -> list:
            if chunk is None:
                self.branch(model, [[self._pad_id] * 2], dummy, 1, None)
                return []
            out = self.branch(model, [prompts[i] for i in chunk], config, num_samples, stop)
            return [out[k * num_samples:(k + 1) * num_samples] for k in range(len(chunk))]

        with isolated_rng(call_seed, self.device):
            return self._in_chunks(prompts, per_call, call)

    def likelihood(self, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        check_answers(answers)

        def call(model, chunk: list[int] | None) -> list:
            if chunk is None:
                self._answer_logprobs(model, [[self._pad_id] * 2], [[self._pad_id]])
                return []
            return self._answer_logprobs(model, [prompts[i] for i in chunk], [answers[i] for i in chunk])

        return self._in_chunks(prompts, self.batch_size, call)

    @property
    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def _in_chunks(self, prompts: list[list[int]], per_call: int, call) -> list:
        """`call(model, indices)` over chunks of prompts (`token_order_chunks`), inside one model context; results
        in input order. `call(model, None)` is the dummy call of a rank that has run out of chunks."""
        parts = token_order_chunks(prompts, per_call)
        calls = max_over_ranks(len(parts), self.accelerator)
        results: list = [None] * len(prompts)
        with self.model_context() as model:
            for k in range(calls):
                if k >= len(parts):
                    call(model, None)
                    continue
                for i, value in zip(parts[k], call(model, parts[k]), strict=True):
                    results[i] = value
        return results

    def branch(self, model, prompts, config, num_samples, stop) -> list[list[int]]:
        """Prefill the prompts (shared leading tokens once) and sample `num_samples` rows from each; the returned rows
        are grouped by prompt."""
        ids, mask, cache = self._prefill(model, prompts)
        self.prefill_tokens += int(mask.sum()) - len(prompts) if cache is None else 0
        rows = self._decode(model, ids, mask, cache, config, stop, num_samples)
        return [cut_at_eos(row, self.eos) for row in rows]

    def _decode(self, model, ids, mask, cache, config, stop, num_samples) -> list[list[int]]:
        """The new tokens of every sample row, in passes. The first reads each prompt's last token once and draws its
        samples' first tokens from those scores (as `generate` draws them); the second decodes every sample row up to
        `FIRST_TOKENS`, from copies of its prompt's cached keys and values; the last, only the rows that have not
        ended (mu's answers are mostly a few tokens, and `generate` decodes every row of a batch until its longest
        one ends). Whether a later pass runs is decided over all ranks: under ZeRO-3 every rank must call the model
        as often as the others."""
        width = ids.size(1)
        criteria = StoppingCriteriaList([StopOnText(self.tokenizer, stop, width)]) if stop else None
        first = copy.deepcopy(config)
        first.max_new_tokens, first.return_dict_in_generate, first.output_scores = 1, True, True
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, generation_config=first)
        scores = out.scores[0]
        if first.do_sample:
            tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples, replacement=True)
        else:
            tokens = scores.argmax(dim=-1, keepdim=True).expand(-1, num_samples)
        sequences = torch.cat([ids.repeat_interleave(num_samples, dim=0), tokens.reshape(-1, 1)], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1).repeat_interleave(num_samples, dim=0)
        device = ids.device
        cache, source = out.past_key_values, torch.arange(len(ids), device=device).repeat_interleave(num_samples)
        rows = [[t] for t in tokens.reshape(-1).tolist()]
        live = list(range(len(rows)))  # the rows of `sequences`
        limit = config.max_new_tokens
        for budget in (min(limit, FIRST_TOKENS) - 1, limit - FIRST_TOKENS):
            # Ended: an EOS (or the padding after one), or a stop string just completed.
            stopped = criteria(sequences, None).tolist() if criteria else [False] * len(sequences)
            going = [k for k, i in enumerate(live)
                     if budget > 0 and not stopped[k] and not any(t in self.eos for t in rows[i])]
            if not max_over_ranks(int(bool(going)), self.accelerator):
                break
            keep = torch.tensor(going or [0], device=device)  # a rank with nothing left decodes one row, unused
            if cache is not None:
                cache.batch_select_indices(source[keep])
            more = copy.deepcopy(config)
            more.max_new_tokens, more.return_dict_in_generate = max(budget, 1), True
            out = model.generate(input_ids=sequences[keep], attention_mask=mask[keep], past_key_values=cache,
                                 generation_config=more, stopping_criteria=criteria)
            live = [live[k] for k in going]
            for i, tail in zip(live, out.sequences[:, sequences.size(1):].tolist()):
                rows[i] += tail
            mask = torch.cat([mask[keep], mask.new_ones(len(keep), out.sequences.size(1) - sequences.size(1))], dim=1)
            sequences, cache, source = out.sequences, out.past_key_values, torch.arange(len(keep), device=device)
        return rows

    def _prefill(self, model, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, DynamicCache | None]:
        """Left-padded ids, mask and a cache of every prompt but its last token, reading shared leading tokens once.

        `prefix_tree` gives each prompt a parent, a longer prompt it shares leading tokens with, and a level. Level 0
        (the roots) is read whole; a prompt of level k reads only its tokens after the part it shares with its
        parent, on top of the parent's cached keys and values (laid out as [pad, shared part | pad, rest];
        positions come from the mask). So the prompt of a group is read once, each completion once, and each of its
        episode prefixes adds only the suffix. A level with nothing to read costs no model call.
        """
        known = len(self._known)
        parent, shared, level = prefix_tree([t for t, _ in self._known] + list(prompts), known=known)
        compact: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [layers for _, layers in self._known]
        compact += [None] * len(prompts)
        prompts = [t for t, _ in self._known] + list(prompts)  # indices below run over known rows, then prompts
        # Each pass reads one level; a level with nothing to read is skipped. Under ZeRO-3 every rank makes as many
        # model calls as the busiest (idle calls on one pad token).
        levels = [[i for i, lv in enumerate(level) if lv == depth and i >= known] for depth in range(LEVELS)]
        reads = [[i for i in rows if len(prompts[i]) - 1 > shared[i]] for rows in levels]
        calls = max_over_ranks(sum(1 for todo in reads if todo), self.accelerator)
        for rows, todo in zip(levels, reads):
            for i in rows:
                compact[i] = self._past(compact, parent[i], shared[i])
            if not todo:
                continue
            computed = self._extend(model, [prompts[i][shared[i]:-1] for i in todo],
                                    [compact[i] for i in todo], [shared[i] for i in todo])
            calls -= 1
            if computed is None:  # a cache that does not keep every position (sliding window): read prompts whole
                self._idle(model, calls)
                return *left_pad(prompts[known:], self._pad_id, self.device), None
            for i, layers in zip(todo, computed):
                compact[i] = layers
        self._idle(model, calls)
        prompts, compact = prompts[known:], compact[known:]
        ids, mask = left_pad(prompts, self._pad_id, self.device)
        filled = [c for c in compact if c is not None]
        if not filled:  # one-token prompts: nothing to cache
            return ids, mask, None
        width = ids.size(1) - 1
        cache = DynamicCache(config=model.config)
        for n, (sample, _) in enumerate(filled[0]):
            keys = sample.new_zeros(len(prompts), sample.size(0), width, sample.size(2))
            values = torch.zeros_like(keys)
            for i, layers in enumerate(compact):
                if layers is not None and layers[n][0].size(1):
                    size = layers[n][0].size(1)
                    keys[i, :, width - size:] = layers[n][0]
                    values[i, :, width - size:] = layers[n][1]
            cache.update(keys, values, n)
        return ids, mask, cache

    def _idle(self, model, calls: int) -> None:
        for _ in range(calls):
            model(input_ids=torch.full((1, 1), self._pad_id, device=self.device), logits_to_keep=1)

    def _past(self, compact, parent: int | None, size: int):
        """The first `size` cached tokens of the parent (per layer: keys and values of shape (heads, size, dim))."""
        if parent is None:
            return None
        return [(k[:, :size], v[:, :size]) for k, v in compact[parent]]

    def _extend(self, model, rests: list[list[int]], pasts: list, sizes: list[int]):
        """One forward pass reading each row's `rest` on top of its `past`; per row and layer, the keys and values of
        past + rest. None when the model's cache does not keep every position."""
        front, back = max(sizes), max(len(r) for r in rests)
        ids = torch.tensor([[self._pad_id] * (back - len(r)) + r for r in rests], device=self.device)
        mask = torch.tensor([[0] * (front - c) + [1] * c + [0] * (back - len(r)) + [1] * len(r)
                             for c, r in zip(sizes, rests)], device=self.device)
        cache = DynamicCache(config=model.config)
        if front:
            for n in range(len(next(p for p in pasts if p))):
                sample = next(p[n][0] for p in pasts if p)
                keys = sample.new_zeros(len(rests), sample.size(0), front, sample.size(2))
                values = torch.zeros_like(keys)
                for i, (past, c) in enumerate(zip(pasts, sizes)):
                    if c:
                        keys[i, :, front - c:] = past[n][0]
                        values[i, :, front - c:] = past[n][1]
                cache.update(keys, values, n)
        model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)[:, front:], past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        self.prefill_tokens += sum(len(r) for r in rests)
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            return None
        return [[(torch.cat([layer.keys[i, :, front - c:front], layer.keys[i, :, front + back - len(r):]], dim=1),
                  torch.cat([layer.values[i, :, front - c:front], layer.values[i, :, front + back - len(r):]], dim=1))
                 for layer in cache.layers]
                for i, (c, r) in enumerate(zip(sizes, rests))]

    def _answer_logprobs(self, model, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
        """log P(answer | prompt) per row: the prompts prefilled like `generate`'s (shared tokens read once), then
        one teacher-forced pass over each prompt's last token and its answer."""
        ids, mask, cache = self._prefill(model, prompts)
        if cache is None:  # no reusable cache: one pass over prompt + answer, keeping the answer's logits
            ids, mask = left_pad([[*p, *a] for p, a in zip(prompts, answers)], self._pad_id, self.device)
            cache, tails = None, [[*p[-1:], *a] for p, a in zip(prompts, answers)]
            width = max(len(t) for t in tails)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                           logits_to_keep=width).logits.float()
            starts = [width - len(t) for t in tails]
        else:
            tails = [[p[-1], *a] for p, a in zip(prompts, answers)]
            width = max(len(t) for t in tails)
            tail_ids = torch.tensor([t + [self._pad_id] * (width - len(t)) for t in tails], device=self.device)
            tail_mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails], device=self.device)
            full = torch.cat([mask[:, :-1], tail_mask], dim=1)
            logits = model(input_ids=tail_ids, attention_mask=full, position_ids=_positions(full)[:, -width:],
                           past_key_values=cache, use_cache=True).logits.float()
            starts = [0] * len(tails)
        logps = torch.log_softmax(logits, dim=-1)
        # The logits at tail position k predict the tail's token k + 1, i.e. answer token k.
        return [sum(logps[i, start + k, token].item() for k, token in enumerate(answer))
                for i, (start, answer) in enumerate(zip(starts, answers))]


FIRST_TOKENS = 4  # tokens every sampled row decodes before the rows that have ended drop out

LEVELS = 4  # prefill passes: a group's prompt, completions (one may branch off another), each prefix's suffix


CUT_SLACK = 8  # cut positions within 1/8 of the loosest one's shared tokens count as group boundaries too


def token_order_chunks(prompts: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Indices of the prompts in chunks of at most `size`, in token order, each cut where two neighbours share the
    fewest leading tokens: the prefixes of one completion (and the completions of one prompt) stay together when
    they fit, so their shared tokens are read once."""
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    shared = [0] + [_common(prompts[a], prompts[b]) for a, b in zip(order, order[1:])]
    parts, start = [], 0
    while start < len(order):
        end = min(start + size, len(order))
        if end < len(order):  # cut before the last position (within this chunk) about as loosely tied as the least
            least = min(shared[start + 1:end + 1])
            end = max(k for k in range(start + 1, end + 1) if shared[k] <= least + least // CUT_SLACK)
        parts.append(order[start:end])
        start = end
    return parts


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_tree(prompts: Sequence[Sequence[int]], levels: int = LEVELS, known: int = 0) -> tuple[list, list[int],
                                                                                          list[int]]:
    """For each prompt: the parent whose cached tokens it reuses (None for a root), how many leading tokens it takes
    from it, and its level (0 for a root, parent's + 1 otherwise, below `levels`).

    The first `known` prompts are roots whose every token is already cached (e.g. by generation); the others go
    longest first, and each takes the earlier prompt (of a level that can have children) it shares the most leading
    tokens with. No other prompt gives or takes its own last token from a cache (it is read when sampling starts).
    """
    order = list(range(known)) + sorted(range(known, len(prompts)), key=lambda i: -len(prompts[i]))
    parent, shared, level = [None] * len(prompts), [0] * len(prompts), [0] * len(prompts)
    common = _common_lengths(prompts)
    done: list[int] = []
    for i in order:
        best, best_len = None, 0
        for j in done if i >= known else []:
            n = min(common[i][j], len(prompts[i]) - 1, len(prompts[j]) - (j >= known))
            if level[j] < levels - 1 and n > best_len:
                best, best_len = j, n
        if best is not None:
            parent[i], shared[i], level[i] = best, best_len, level[best] + 1
        done.append(i)
    return parent, shared, level


def _common_lengths(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    """Leading tokens every pair of prompts has in common (vectorised: prompts can be thousands of tokens)."""
    if not prompts:
        return []
    width = max(len(p) for p in prompts)
    grid = torch.full((len(prompts), width), -1, dtype=torch.long)
    for i, p in enumerate(prompts):
        grid[i, :len(p)] = torch.tensor(list(p), dtype=torch.long)
    rows = []
    for i, p in enumerate(prompts):
        same = (grid == grid[i]) & (grid >= 0)
        rows.append(same.long().cumprod(dim=1).sum(dim=1).tolist())
    return rows


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as transformers' generate computes them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class StopOnText(StoppingCriteria):
    """Stops a row once its new text contains a stop string (the string is kept, as with vLLM's
    include_stop_str_in_output). Cheaper than transformers' `stop_strings`, which indexes the whole vocabulary."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int, window: int = 8):
        self.tokenizer, self.stop, self.start, self.window = tokenizer, list(stop), prompt_width, window

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        # Only the last few tokens can hold a newly completed stop string.
        tail = input_ids[:, max(self.start, input_ids.size(1) - self.window):]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        return torch.tensor([any(s in text for s in self.stop) for text in texts], device=input_ids.device)
