"""DAGER's search (Petrov et al., NeurIPS 2024): from per-position token candidates to whole sequences.

Step 1 (:func:`token_candidates`): at each position p, the tokens v whose first-block input (e.g.
GPT-2's ``ln_1(wte[v] + wpe[p])``) lies within ``tau1`` of the first block's input span, best first
(at most ``max_tokens``; the pad id is never a candidate: the client's padding is masked out). The
positions end at the first one with no candidate. With learned absolute positions a position's
candidates are not only its own tokens: a token that occurs at two positions q, q' puts
``wpe[q] − wpe[q']`` into the span, so with enough repeated tokens (spaces, punctuation) every token
of the batch passes at every position — up to the span's rank, which is why ``max_tokens`` must not
be a small multiple of B (measured: B = 16, T = 32 on GPT-2 small's shape gives 239 candidates per
position for 16 true ones).

Step 2 checks candidates against the *second* block's input span, whose inputs depend on the context:

- decoders (:func:`greedy_decoder`, the paper's greedy search): position p's second-block input
  depends on tokens 0…p only (causal mask), so prefixes grow one token at a time — every kept prefix
  of length p times every candidate at p, kept when its position-p input is within ``tau2``; a prefix
  that no candidate extends is a finished sequence.
- encoders (:func:`encoder_search`): every input depends on the whole sequence. For each length l
  (longest first) the paper's exhaustive search over the candidates' product is run when it has at
  most ``max_combinations`` members; otherwise a coordinate search (fedleak's, in place of the paper's
  random sampling of the product): ``restarts`` random picks, each position in turn set to the
  candidate that minimises the sequence's mean second-block distance, until no position changes.
  A sequence of length l whose largest per-position distance is within ``tau2`` is accepted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fedleak.attacks.dager_span import Span, distance

Inputs = Callable[[Tensor], Tensor]  # token batch n×l → second-block inputs n×l×d
Extend = Callable[[Tensor, Tensor], Tensor]  # prefixes n×p, tokens c → new position's inputs (n·c)×d


@dataclass
class Found:
    """Sequences (token lists) and each one's certificate: its largest second-block distance."""

    sequences: list[list[int]]
    distances: list[float]


def token_candidates(first: Callable[[int], Tensor], spans: list[Span], tau1: float, max_tokens: int,
                     max_positions: int, pad_id: int, positional: bool = True) -> tuple[list[Tensor], list[Tensor]]:
    """Step 1: per position, the candidate token ids (best first) and their distances (computed once
    and repeated when the first block's input does not depend on the position: rotary models)."""
    ids: list[Tensor] = []
    dists: list[Tensor] = []
    if not positional:
        once, near = token_candidates(first, spans, tau1, max_tokens, 1, pad_id)
        return once * max_positions, near * max_positions
    for p in range(max_positions):
        with torch.no_grad():
            inputs = first(p)
            rough = distance(spans, inputs, torch.float32)  # the whole vocabulary, fast
            rough[pad_id] = float("inf")
            order = torch.argsort(rough)[:max_tokens]
            order = order[rough[order] <= tau1 + 1e-4]  # float32 resolves about 1e-6
            d = distance(spans, inputs[order])  # the survivors again, in float64
        keep = order[d <= tau1]
        d = d[d <= tau1]
        keep, d = keep[torch.argsort(d)], torch.sort(d).values
        if keep.numel() == 0:
            break
        ids.append(keep)
        dists.append(d)
    return ids, dists


def greedy_decoder(candidates: list[Tensor], spans: list[Span], extend: Extend, tau2: float,
                   max_prefixes: int, rotary: bool = False, relative: float | None = None) -> tuple[Found, list[int]]:
    """Step 2 for a decoder; also returns, per position, how many prefixes were kept. ``extend(prefixes,
    tokens)`` gives the second-block input at the new position of every prefix (n×p) followed by
    every token: (n·c)×d, prefix-major.

    ``rotary``: positions enter only through rotary attention, so a sequence that opens with a run of
    one token ``v v … v`` has at every position of the run the same inputs as ``v`` alone (attention
    over equal values returns that value): the span cannot tell the run's length, and every true
    first token would grow into an endless run. Such runs are not extended (a sequence that truly
    opens with a repeated token is then recovered without the repeats)."""
    first = candidates[0] if candidates else torch.zeros(0, dtype=torch.long)
    prefixes = first.view(-1, 1)
    scores = distance(spans, extend(prefixes[:1, :0], first)) if len(first) else torch.zeros(0)
    keep = scores <= tau2
    prefixes, worst = prefixes[keep], scores[keep]
    done = Found([], [])
    kept = [len(prefixes)]
    for p in range(1, len(candidates) + 1):
        if not len(prefixes):
            break
        if p == len(candidates):
            ended = torch.ones(len(prefixes), dtype=torch.bool)
        else:
            nxt = candidates[p]
            grown = torch.cat([prefixes.repeat_interleave(len(nxt), 0), nxt.repeat(len(prefixes)).view(-1, 1)], 1)
            d = distance(spans, extend(prefixes, nxt))
            ok = d <= tau2
            if rotary:
                ok &= ~(grown == grown[:, :1]).all(dim=1)
            if relative is not None:  # a noisy span: only extensions near each prefix's best one
                per = d.view(len(prefixes), len(nxt))
                best = per.min(dim=1, keepdim=True).values
                ok &= (per <= relative * best).flatten()
            extended = ok.view(len(prefixes), len(nxt)).any(dim=1)
            ended = ~extended
            order = torch.argsort(d[ok])[:max_prefixes]
            new_worst = torch.maximum(worst.repeat_interleave(len(nxt)), d)[ok][order]
        for i in torch.nonzero(ended).flatten().tolist():
            done.sequences.append(prefixes[i].tolist())
            done.distances.append(float(worst[i]))
        if p < len(candidates):
            prefixes, worst = grown[ok][order], new_worst
            kept.append(len(prefixes))
    return done, kept


def _scores(spans: list[Span], inputs: Inputs, batch: Tensor) -> tuple[Tensor, Tensor]:
    d = distance(spans, inputs(batch))
    return d.mean(dim=1), d.amax(dim=1)


def _accept(found: Found, seq: list[int], worst: float, tau2: float) -> None:
    if worst <= tau2 and seq not in found.sequences:
        found.sequences.append(seq)
        found.distances.append(worst)


def encoder_search(candidates: list[Tensor], spans: list[Span], inputs: Inputs, tau2: float, batch: int,
                   max_combinations: int, restarts: int, sweeps: int, generator: torch.Generator) -> Found:
    """Step 2 for an encoder (see the module docstring); stops once ``batch`` sequences are found."""
    found = Found([], [])
    for length in range(len(candidates), 0, -1):
        if len(found.sequences) >= batch:
            break
        sets = candidates[:length]
        size = 1
        for s in sets:
            size *= len(s)
        if size <= max_combinations:
            combos = torch.tensor(list(itertools.product(*[s.tolist() for s in sets])), dtype=torch.long)
            for part in combos.split(1024):
                _, worst = _scores(spans, inputs, part)
                for i in torch.nonzero(worst <= tau2).flatten().tolist():
                    _accept(found, part[i].tolist(), float(worst[i]), tau2)
            continue
        picks = torch.stack([s[torch.randint(len(s), (restarts,), generator=generator)] for s in sets], dim=1)
        for _ in range(sweeps):
            changed = False
            for p, options in enumerate(sets):
                trial = picks.repeat_interleave(len(options), 0)
                trial[:, p] = options.repeat(len(picks))
                mean, _ = _scores(spans, inputs, trial)
                best = mean.view(len(picks), len(options)).argmin(dim=1)
                new = options[best]
                changed = changed or bool((new != picks[:, p]).any())
                picks[:, p] = new
            if not changed:
                break
        _, worst = _scores(spans, inputs, picks)
        for i in torch.argsort(worst).tolist():
            _accept(found, picks[i].tolist(), float(worst[i]), tau2)
    return found
