"""DAGER (Petrov et al., NeurIPS 2024, "DAGER: Exact Gradient Inversion for Large Language Models"):
a batch of token sequences recovered exactly from a transformer's update.

The weight gradient of a linear layer is spanned, in input space, by the layer's inputs
(:mod:`fedleak.attacks.dager_span`); when the batch's B·T tokens are fewer than the model width d,
that span is a proper subspace and membership is a discrete, exact test. DAGER tests the first
block's input for every vocabulary token at every position (step 1), then grows or searches whole
sequences whose *second* block's inputs lie in the second block's span (step 2,
:mod:`fedleak.attacks.dager_search`: greedy for decoders, a search for encoders). Models:
:mod:`fedleak.attacks.dager_layout` (GPT-2, LLaMA, BERT). Under a language-model loss the last token of
each sequence is in no span and is read off the update's residual (:mod:`fedleak.attacks.dager_last`,
an addition to the paper; ``last_token=false`` leaves it as padding).

Updates: FedSGD's gradient, or LoRA adapters' (the span is that of ``∂L/∂A``, or of ``∂L/∂B`` with
the candidates mapped through A; exact while the batch's tokens are fewer than the rank r), or
FedAvg's θ₀ − θ_τ: as in the paper the span of the accumulated update is used, with candidates
computed at the global model (``weights=start``) or halfway along the update (``weights=mid``);
the inputs moved during local training, so the spans are only approximately those of any one
model and the thresholds may need raising. The attacker is assumed to know the batch size (the
public hyperparameters); sequence lengths come out of the search.

Each recovered sequence is *certified* by its distance: the largest relative distance of its
second-block inputs to the span (``Reconstruction.notes``); a span that fills the whole width
(the batch is too large: B·T ≥ d, or r for LoRA) makes every token pass, and the attack returns
no sequence and says that it cannot be exact.
"""

from __future__ import annotations

import copy
import time
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from fedleak.attacks.base import (
    Attack,
    AttackConfig,
    AttackerKnowledge,
    Reconstruction,
    check_update,
    register_attack,
    target_model,
)
from fedleak.attacks.dager_last import recover_last
from fedleak.attacks.dager_layout import base_model, layer_inputs, layout_of, next_inputs
from fedleak.attacks.dager_search import Found, encoder_search, greedy_decoder, token_candidates
from fedleak.attacks.dager_span import Span, block_spans
from fedleak.attacks.labels import recover_labels
from fedleak.errors import FedleakError
from fedleak.fl.payload import Payload
from fedleak.models.text import CausalLM, TextModel
from fedleak.parameters import trainable


class DagerConfig(AttackConfig):
    tau1: float | None = Field(None, gt=0, lt=1, description="step 1: largest relative distance of a token's "
                               "first-block input to the first block's span (default 1e-3; 0.1 under the noise rule)")
    tau2: float | None = Field(None, gt=0, lt=1, description="step 2: largest relative distance of a sequence's "
                               "second-block inputs to the second block's span (default 1e-3; 0.1 under the noise rule)")
    noise_relative: float = Field(2.0, ge=1, description="noise rule, decoder: an extension is kept only within this "
                                  "factor of its prefix's best extension's distance (a noisy span lets wrong tokens "
                                  "pass an absolute threshold beside the true one)")
    rank_rule: Literal["auto", "relative", "noise"] = Field(
        "auto", description="which singular values span the inputs: relative (above rank_tol × the largest), noise "
        "(above Gavish & Donoho's threshold for unknown Gaussian noise), auto (noise when the public defense adds "
        "noise: noise or dpsgd)")
    rank_tol: float = Field(1e-6, gt=0, lt=1, description="singular values above rank_tol × the largest span "
                            "the layer's inputs (raise it for FedAvg or a noisy update)")
    max_tokens: int | None = Field(None, ge=1, description="most candidate tokens per position (default: the "
                                   "first block's span rank, which bounds the tokens that can pass)")
    max_prefixes: int | None = Field(None, ge=1, description="decoder: most prefixes kept per position "
                                     "(default 4·B + 16)")
    max_combinations: int = Field(4096, ge=1, description="encoder: exhaustive search up to this many "
                                  "combinations per length, coordinate search above")
    restarts: int | None = Field(None, ge=1, description="encoder coordinate search: random starts per length "
                                 "(default 8·B)")
    sweeps: int = Field(4, ge=1, description="encoder coordinate search: most passes over the positions")
    last_token: bool = Field(True, description="language model: read each sequence's last token off the update")
    shortlist: int | None = Field(None, ge=1, description="last token: candidates per sequence (default B + 8)")
    budget: int = Field(20_000, ge=1, description="last token: parameter entries of the residual fit")
    weights: Literal["start", "mid"] = Field("start", description="FedAvg: candidates' inputs at the global model "
                                             "(start, the paper's) or halfway along the update (mid)")
    chunk: int = Field(256, ge=1, description="candidate sequences per forward pass")


def _midway(model: nn.Module, payload: Payload) -> None:
    """Move ``model``'s trainable parameters halfway along the FedAvg update (θ₀ − θ_τ, or over lr)."""
    hyper = payload.hyper
    scale = (hyper.lr or 1.0) if hyper.update_scale == "delta/lr" else 1.0
    with torch.no_grad():
        for name, p in trainable(model):
            if name in payload.update:
                p.sub_(0.5 * scale * payload.update[name].to(p.dtype))


def _pad(sequences: list[list[int]], batch: int, pad_id: int) -> Tensor:
    width = max([len(s) for s in sequences] + [1])
    out = torch.full((batch, width), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences[:batch]):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _samples(model: nn.Module, probes: list[nn.Module], vocab: int, pad_id: int, width: int,
             seed: int) -> list[Tensor]:
    """Inputs of each probe on random token sequences (at least 2·width of them in all), to measure
    the dimension the layer's inputs occupy."""
    g = torch.Generator().manual_seed(seed)
    length = min(8, getattr(model, "max_length", 8))
    tokens = torch.randint(0, vocab, (-(-2 * width // length), length), generator=g)
    tokens[tokens == pad_id] = (pad_id + 1) % vocab
    return [layer_inputs(model, p, tokens).flatten(0, 1) for p in probes]


TAU = {"relative": 1e-3, "noise": 0.1}  # the span thresholds' defaults per rank rule
NOISY = ("noise", "dpsgd")  # defense stages that add Gaussian noise to the update


def _noisy(defense: str | None) -> bool:
    """Whether the public defense spec adds Gaussian noise (a stage named in :data:`NOISY`)."""
    return bool(defense) and any(part.split(":")[0].strip() in NOISY for part in str(defense).split("+"))


def _describe(spans: list[Span]) -> str:
    return "; ".join(f"rank {s.rank} of {s.width} from {s.source}" for s in spans) or "no non-zero gradient"


@register_attack("dager")
class Dager(Attack[DagerConfig]):
    """DAGER: a text batch read exactly off the first two transformer blocks' gradient spans."""

    def run(self, payload: Payload, knowledge: AttackerKnowledge, seed: int = 0, progress: bool = False) -> Reconstruction:
        start = time.perf_counter()
        cfg = self.config
        batch = payload.hyper.observed_images
        model = target_model(payload, knowledge)
        if not isinstance(model, TextModel):
            raise FedleakError(f"DAGER attacks text models (fedleak's text wrappers), not {type(model).__name__}")
        check_update(payload, dict(model.named_parameters()))
        model.eval()
        probe_model = copy.deepcopy(model) if payload.hyper.protocol == "fedavg" and cfg.weights == "mid" else model
        if probe_model is not model:
            _midway(probe_model, payload)
        layout = layout_of(probe_model.hf)
        base = base_model(probe_model.hf)
        blocks = layout.blocks(base)
        if len(blocks) < 2:
            raise FedleakError("DAGER needs a model with at least two transformer blocks")
        names = {m: n for n, m in probe_model.named_modules()}
        rule = cfg.rank_rule if cfg.rank_rule != "auto" else ("noise" if _noisy(payload.hyper.defense) else "relative")
        tau1, tau2 = (cfg.tau1 or TAU[rule]), (cfg.tau2 or TAU[rule])
        spans = [block_spans([(names[p], p) for p in layout.probes(blocks[k])], payload.update, torch.float64,
                             cfg.rank_tol, rule) for k in (0, 1)]
        notes = [f"dager: block {k + 1} input span: {_describe(s)}" for k, s in enumerate(spans)]
        if rule == "noise":
            notes.append(f"dager: a noisy update: spans of the singular values above the noise threshold (Gavish & "
                         f"Donoho), thresholds tau1={tau1:g}, tau2={tau2:g}: recovered sequences are the closest "
                         "ones, not certified exact")
        empty = Reconstruction(images=_pad([], batch, model.pad_id), labels=torch.zeros(batch, dtype=torch.long),
                               matching_loss=float("inf"), restart_losses=[float("inf")], iterations=0,
                               seconds=0.0, notes=notes)
        if not spans[0] or not spans[1]:
            notes.append("dager: cannot attack: the update holds no gradient of the first two blocks' input "
                         "projections (full weights or LoRA adapters)")
            empty.seconds = time.perf_counter() - start
            return empty
        samples = _samples(probe_model, [layout.probes(blocks[k])[0] for k in (0, 1)], model.vocab_size,
                           model.pad_id, spans[0][0].basis.shape[0], seed)
        # A span that fills the room its inputs occupy passes every token: it is dropped where the block
        # has another (LoRA after round 1: A's update is float32 rounding of a small step, B's is not);
        # a block left with none cannot be attacked exactly.
        full: list[tuple[Span, int]] = []
        for k, group in enumerate(spans):
            rooms = [s.room(samples[k], cfg.rank_tol) for s in group]
            full += [(s, room) for s, room in zip(group, rooms) if s.saturated(room)]
            usable = [s for s, room in zip(group, rooms) if not s.saturated(room)]
            if usable and len(usable) < len(group):
                notes.append(f"dager: block {k + 1}: dropped the span(s) of "
                             + ", ".join(s.source for s, room in zip(group, rooms) if s.saturated(room))
                             + ", as large as they can be (rounding, not the batch, may set them); checking against "
                             + ", ".join(s.source for s in usable))
            spans[k] = usable or group
            top = max(s.rank for s in spans[k])
            short = [s for s in spans[k] if s.rank < top]
            if short:  # a span of lower rank misses inputs: a query's gradient vanishes at position 0,
                # where attention has one key (LoRA on q_proj alone); a candidate is checked against the others
                notes.append(f"dager: block {k + 1}: not checking against " + ", ".join(
                    f"{s.source} (rank {s.rank} < {top}: it misses inputs)" for s in short))
                spans[k] = [s for s in spans[k] if s.rank == top]
        blocked = [(s, room) for s, room in full if any(s is t for t in spans[0] + spans[1])]
        if blocked:
            span, room = blocked[0]
            notes.append(f"dager: cannot be exact: the span of {span.source} (rank {span.rank}) fills the "
                         f"{min(room, span.columns or room)} dimensions it can have, so every token passes the check "
                         "(the batch's tokens are too many: B·T ≥ d, or ≥ r under LoRA; or, after several FedAvg "
                         "steps, small singular values of the moving inputs: raise rank_tol)")
            empty.seconds = time.perf_counter() - start
            return empty
        lm = isinstance(model, CausalLM)
        if not lm and len(blocks) == 2:
            notes.append("dager: block 2 is the classifier's last block, where only the pooled position's "
                         "gradient reaches the projections: its span may miss tokens (a deeper model does not)")
        max_tokens = cfg.max_tokens or max(s.rank for s in spans[0])
        with torch.no_grad():
            ids, _ = token_candidates(lambda p: layout.first_inputs(base, p).detach(), spans[0], tau1,
                                      max_tokens, model.max_length, model.pad_id, layout.positional)
        if layout.positional:
            notes.append(f"dager: step 1: {len(ids)} positions, candidate tokens per position "
                         f"{[len(i) for i in ids]}")
        else:
            notes.append(f"dager: step 1: {len(ids[0]) if ids else 0} candidate tokens, the same at every position "
                         "(rotary positions: the first block's input has none)")
        probe = layout.probes(blocks[1])[0]

        def inputs(tokens: Tensor) -> Tensor:
            return layer_inputs(probe_model, probe, tokens, cfg.chunk)

        if layout.causal:
            def extend(prefixes: Tensor, tokens: Tensor) -> Tensor:
                return next_inputs(probe_model, probe, prefixes, tokens, cfg.chunk)

            found, kept = greedy_decoder(ids, spans[1], extend, tau2, cfg.max_prefixes or 4 * batch + 16,
                                         rotary=not layout.positional,
                                         relative=cfg.noise_relative if rule == "noise" else None)
            notes.append(f"dager: step 2 (greedy, causal): prefixes kept per position {kept}")
        else:
            found = encoder_search(ids, spans[1], inputs, tau2, batch, cfg.max_combinations,
                                   cfg.restarts or 8 * batch, cfg.sweeps, torch.Generator().manual_seed(seed))
        order = sorted(range(len(found.sequences)), key=lambda i: found.distances[i])[:batch]
        found = Found([found.sequences[i] for i in order], [found.distances[i] for i in order])
        notes.append(f"dager: {len(found.sequences)} of {batch} sequences found; certificates (largest block-2 "
                     f"distance, ≤ tau2={tau2:g}): " + ", ".join(f"{d:.1e}" for d in found.distances))
        sequences = found.sequences
        if lm and found.sequences:
            if cfg.last_token:
                scale = 1.0
                if payload.hyper.protocol == "fedavg":
                    lr = payload.hyper.lr or 1.0
                    scale = payload.hyper.local_steps * (1.0 if payload.hyper.update_scale == "delta/lr" else lr)
                last = recover_last(model, found.sequences, payload.update, model.pad_id,
                                    cfg.shortlist or batch + 8, cfg.budget, scale)
                sequences = [s + [t] for s, t in zip(found.sequences, last.tokens)]
                if abs(last.scale / scale - 1) > 0.01:
                    notes.append(f"dager: the update is {last.scale:.3g} times a gradient (read off the head), not "
                                 f"{scale:.3g} as its hyperparameters say: clipped or rescaled")
                notes.append(f"dager: last tokens (in no span under a next-token loss) fitted to the update's "
                             f"residual: relative residual {last.residual:.1e} (0: exact"
                             + ("; FedAvg: approximate" if payload.hyper.protocol == "fedavg" else "") + ")")
            else:
                notes.append("dager: last token of each sequence not recovered (last_token=false): left as padding")
        if len(found.sequences) < batch:
            notes.append(f"dager: {batch - len(found.sequences)} sequences not found (repeated sequences or "
                         "prefixes, or thresholds too tight): their rows are padding")
        labels = torch.zeros(batch, dtype=torch.long)
        if not lm:
            try:
                labels = recover_labels(payload, knowledge, "auto").to(torch.long)[:batch]
            except FedleakError as exc:
                notes.append(f"dager: labels not recovered ({exc}); zeros")
        worst = max(found.distances) if found.distances else float("inf")
        return Reconstruction(images=_pad(sequences, batch, model.pad_id), labels=labels, matching_loss=worst,
                              restart_losses=[worst], iterations=0, seconds=time.perf_counter() - start,
                              trace=[{"positions": float(len(ids)), "found": float(len(found.sequences)),
                                      "rank1": float(spans[0][0].rank), "rank2": float(spans[1][0].rank)}],
                              notes=notes)
