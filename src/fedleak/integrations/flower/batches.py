"""The client's own batch, where the client side needs it: the gate scores its update against it,
and in a simulation it may be shared with the auditor for scoring.

The ClientApp's train function records the examples it trained on with :func:`record_batch` (in
the node's ``context.state``, which Flower keeps on the node and never sends); mods read them back
with :func:`recorded_batch`. Images are in [0, 1] (before normalisation), in the order the client
indexes its examples (the order minibatches and ``shuffle-seed`` refer to).

:class:`SharedBatches` is for simulations only: a folder on the machine that runs both sides, where
clients leave their batch (:meth:`SharedBatches.mod`) and the audit's evaluation hook picks it up
after the attack has returned. Real clients never share their data; a real audit runs without it.
"""

from __future__ import annotations

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


def record_batch(context: Context, message: Message, images: Tensor, labels: Tensor) -> None:
    """Remember the examples this round's training used (``images`` N×C×H×W in [0, 1], ``labels``
    N class indices), for the mods of this node; ``message`` is the train instruction."""
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise FedleakError(f"record_batch needs N×C×H×W images and N labels, got {tuple(images.shape)} and "
                           f"{tuple(labels.shape)}")
    context.state[BATCH_KEY] = ArrayRecord({
        "images": Array(images.detach().cpu().float().contiguous().numpy()),
        "labels": Array(labels.detach().cpu().long().contiguous().numpy()),
    })
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
    return ClientData(torch.from_numpy(record["images"].numpy().copy()),
                      torch.from_numpy(record["labels"].numpy().copy()))


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
        save_file({"images": data.images.contiguous(), "labels": data.labels.contiguous()}, str(tmp))
        tmp.replace(path)

    def __call__(self, run_id: int, server_round: int, node_id: int) -> ClientData | None:
        """The batch node ``node_id`` shared for round ``server_round`` of run ``run_id`` (``None``
        when it shared none), removed from the folder as it is read."""
        path = self._path(run_id, server_round, node_id)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        path.unlink()
        return ClientData(tensors["images"], tensors["labels"])

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
