"""The client's own batch, where the client side needs it: the gate scores its update against it,
and in a simulation it may be shared with the auditor for scoring.

The ClientApp's train function records the examples it trained on with :func:`record_batch` (in
the node's ``context.state``, which Flower keeps on the node and never sends); mods read them back
with :func:`recorded_batch`. Images are in [0, 1] (before normalisation); a text client's inputs are
token ids (int64 N×T, right-padded); both in the order the client indexes its examples (the order
minibatches and ``shuffle-seed`` refer to). ``indices`` (optional) name each example in the data set
it comes from (a text audit looks its recorded PII spans up by them).

:class:`SharedBatches` is for simulations only: a folder on the machine that runs both sides, where
clients leave their batch (:meth:`SharedBatches.mod`) and the audit's evaluation hook picks it up
after the attack has returned. Real clients never share their data; a real audit runs without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod
from safetensors.torch import load_file, save_file
from torch import Tensor

from fedleak.errors import FedleakError
from fedleak.fl.payload import ClientData

BATCH_KEY = "fedleak.batch"
ORIGIN_KEY = "fedleak.batch.origin"


def is_train(message: Message) -> bool:
    return message.metadata.message_type.split(".")[0] == MessageType.TRAIN


def _inputs(inputs: Tensor) -> Tensor:
    """Images as float32, token ids as int64 (the two forms a batch's inputs take)."""
    inputs = inputs.detach().cpu()
    return (inputs.float() if inputs.is_floating_point() else inputs.long()).contiguous()


def record_batch(context: Context, message: Message, images: Tensor, labels: Tensor,
                 indices: Sequence[int] | None = None) -> None:
    """Remember the examples this round's training used, for the mods of this node: ``images`` N×C×H×W
    in [0, 1] and N class ``labels``, or a text batch — token ids N×T (int64) and per sequence a class
    or its N×(T−1) next-token targets; ``indices`` (optional) the examples' places in their data set.
    ``message`` is the train instruction."""
    n = images.shape[0] if images.ndim else 0
    form = (images.ndim == 4 and images.is_floating_point() and labels.shape == (n,)) or (
        images.ndim == 2 and not images.is_floating_point() and labels.shape in ((n,), (n, images.shape[1] - 1)))
    if not form or (indices is not None and len(indices) != n):
        raise FedleakError(f"record_batch needs N×C×H×W images and N labels, or N×T token ids and N (or N×(T−1)) "
                           f"labels, and one index per example, got {tuple(images.shape)} and {tuple(labels.shape)}")
    arrays = {"images": Array(_inputs(images).numpy()), "labels": Array(labels.detach().cpu().long().contiguous().numpy())}
    if indices is not None:
        arrays["indices"] = Array(torch.tensor([int(i) for i in indices], dtype=torch.long).numpy())
    context.state[BATCH_KEY] = ArrayRecord(arrays)
    context.state[ORIGIN_KEY] = ConfigRecord({"message-id": message.metadata.message_id,
                                              "group-id": message.metadata.group_id})


def recorded_batch(message: Message, context: Context) -> ClientData:
    """The batch :func:`record_batch` stored for ``message`` (an error if none, or one of another round)."""
    if BATCH_KEY not in context.state.array_records:
        raise FedleakError("the ClientApp recorded no batch (call fedleak.integrations.flower.record_batch in its "
                           "train function)")
    origin = context.state.config_records.get(ORIGIN_KEY, ConfigRecord())
    if (origin.get("message-id"), origin.get("group-id")) != (message.metadata.message_id, message.metadata.group_id):
        raise FedleakError("the recorded batch belongs to an earlier message: record_batch was not called this round")
    record = context.state.array_records[BATCH_KEY]
    indices = tuple(int(i) for i in record["indices"].numpy().tolist()) if "indices" in record else ()
    return ClientData(torch.from_numpy(record["images"].numpy().copy()),
                      torch.from_numpy(record["labels"].numpy().copy()), indices)


class SharedBatches:
    """A folder where simulated clients leave their batch and the audit's evaluation hook reads it
    (each file once: it is deleted when read). Files are safetensors, which hold tensors only, named
    by run, round (the ``server-round`` entry Flower's strategies put in the train config) and node."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, run_id: int, server_round: int, node_id: int) -> Path:
        return self.folder / f"run{run_id}-round{server_round}-node{node_id}.safetensors"

    def share(self, run_id: int, server_round: int, node_id: int, data: ClientData) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(run_id, server_round, node_id)
        tmp = path.with_suffix(".partial")
        tensors = {"images": data.images.contiguous(), "labels": data.labels.contiguous()}
        if data.indices:
            tensors["indices"] = torch.tensor(data.indices, dtype=torch.long)
        save_file(tensors, str(tmp))
        tmp.replace(path)

    def __call__(self, run_id: int, server_round: int, node_id: int) -> ClientData | None:
        """The batch node ``node_id`` shared for round ``server_round`` of run ``run_id`` (``None``
        when it shared none), removed from the folder as it is read."""
        path = self._path(run_id, server_round, node_id)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        path.unlink()
        indices = tuple(int(i) for i in tensors["indices"].tolist()) if "indices" in tensors else ()
        return ClientData(tensors["images"], tensors["labels"], indices)

    def discard(self, run_id: int, server_round: int, node_id: int) -> None:
        """Remove a batch nobody will score (the audit calls this for the updates it does not audit)."""
        self._path(run_id, server_round, node_id).unlink(missing_ok=True)

    def mod(self) -> Mod:
        """A client mod that, after each train reply, shares the batch the ClientApp recorded."""

        def share_batch(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
            reply = call_next(message, context)
            if is_train(message) and not reply.has_error():
                config = next(iter(message.content.config_records.values()), ConfigRecord())
                server_round = int(cast(int, config.get("server-round", 0)))  # the server sends an int
                self.share(message.metadata.run_id, server_round, context.node_id, recorded_batch(message, context))
            return reply

        return share_batch
