"""The corpus, the model and the local training of the example — what a Flower user writes. Nothing
here knows about the audit except :func:`record_batch`, which tells the client mods which sentences
this round trained on (their token ids and their places in the corpus)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from flwr.app import Context, Message
from torch.utils.data import DataLoader, Subset

from fedleak.data import load_dataset
from fedleak.data.text import TextDataset
from fedleak.integrations.flower import record_batch
from fedleak.models import create_model
from fedleak.models.text import CausalLM, lm_targets

CLIENTS = 3  # the federation's size (num-supernodes): the corpus is cut into this many shards


@lru_cache(maxsize=2)
def corpus(per_client: int, public: int, seq_len: int) -> TextDataset:
    """The ``pii`` corpus (Faker sentences with names, e-mails, phones, addresses, card numbers;
    generated offline, seeded) with its BPE tokenizer: the clients' shards, then the server's public part."""
    wanted = CLIENTS * per_client + public
    data = load_dataset("pii", None, split="train", seq_len=seq_len, n=int(wanted / 0.8) + 2)  # 20 % held out
    assert len(data) >= wanted, (len(data), wanted)
    return data


def dataset(cfg: dict) -> TextDataset:
    return corpus(int(cfg["sentences-per-client"]), int(cfg["public-sentences"]), int(cfg["seq-len"]))


def build_model(cfg: dict) -> CausalLM:
    """A 2-layer GPT-2 (d = 128, random init: the federation's starting point, seeded) with LoRA
    adapters on the attention's input projection; only the adapters train and travel."""
    data = dataset(cfg)
    tok = data.tokenizer
    model = create_model("gpt2-tiny", tok.vocab_size, 1, data.seq_len, vocab_size=tok.vocab_size,
                         pad_id=tok.pad_id, max_length=data.seq_len, seed=0, lora=str(cfg["lora"]))
    assert isinstance(model, CausalLM)
    return model


def adapters(model: CausalLM) -> dict[str, torch.Tensor]:
    """What travels, as in Flower's FlowerTune LLM apps: only the LoRA adapters (peft's own state
    dict of them; the frozen base model never moves and every party builds it alike)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model.hf).items()}


def load_adapters(model: CausalLM, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model.hf, state)


class Model:
    """``build_model`` as a picklable callable (the audit's worker process builds it by its module path)."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = {k: cfg[k] for k in ("sentences-per-client", "public-sentences", "seq-len", "lora")}

    def __call__(self) -> CausalLM:
        return build_model(self.cfg)


def shard(cfg: dict, partition_id: int) -> list[int]:
    n = int(cfg["sentences-per-client"])
    return list(range(partition_id * n, (partition_id + 1) * n))


def public_tokens(cfg: dict) -> torch.Tensor:
    data = dataset(cfg)
    start = CLIENTS * int(cfg["sentences-per-client"])
    return data.tokens(list(range(start, start + int(cfg["public-sentences"]))))


def train(message: Message, context: Context) -> tuple[CausalLM, int, float]:
    """One round: ``local-steps`` minibatches of a shuffling DataLoader over the client's sentences
    (a fresh private order each round), next-token cross-entropy, SGD with momentum on the adapters."""
    config, cfg = message.content["config"], context.run_config
    model = build_model(cfg)
    load_adapters(model, message.content["arrays"].to_torch_state_dict())
    data = dataset(cfg)
    mine = shard(cfg, int(context.node_config["partition-id"]))
    loader = DataLoader(Subset(range(len(data)), mine), batch_size=int(config["batch-size"]), shuffle=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=float(config["lr"]),
                                momentum=float(config["momentum"]))
    model.train()
    used: list[int] = []
    total = 0.0
    for _, batch in zip(range(int(config["local-steps"])), loader):
        indices = [int(i) for i in batch]
        tokens = data.tokens(indices)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(tokens), lm_targets(tokens, data.tokenizer.pad_id))
        loss.backward()
        optimizer.step()
        used, total = used + indices, total + loss.item()
    tokens = data.tokens(used)
    record_batch(context, message, tokens, lm_targets(tokens, data.tokenizer.pad_id), used)  # for the client mods
    return model, len(used), total / max(1, int(config["local-steps"]))


def results_folder(cfg: dict) -> Path:
    return Path(str(cfg["out"]) or "flower-text-report").expanduser().resolve()


def shared_folder(cfg: dict) -> Path:
    folder = results_folder(cfg)
    return folder.with_name(folder.name + ".shared-batches")
