"""The ClientApp: plain local training; in a simulation, the batch is shared with the auditor for scoring."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from fedleak.integrations.flower import SharedBatches
from flower_text.task import adapters, shared_folder, train


def share(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Simulation only (``evaluation = true``): leave this round's batch where the audit scores it."""
    if not context.run_config["evaluation"]:
        return call_next(message, context)
    return SharedBatches(shared_folder(context.run_config)).mod()(message, context, call_next)


app = ClientApp(mods=[share])


@app.train()
def fit(message: Message, context: Context) -> Message:
    model, examples, loss = train(message, context)
    # Only the adapters travel (FlowerTune's way): the update the server sees is theirs.
    return Message(RecordDict({"arrays": ArrayRecord(adapters(model)),
                               "metrics": MetricRecord({"num-examples": examples, "train-loss": loss})}),
                   reply_to=message)
