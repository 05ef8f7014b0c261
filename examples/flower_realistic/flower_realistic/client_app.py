"""The ClientApp: plain local training on the node's CIFAR-10 shard. The learning rate comes in the
server's train config; epochs, batch size, momentum and weight decay are the app's run config."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from fedleak.integrations.flower import SharedBatches, record_batch
from flower_realistic.task import Net, client_data, shared_folder, train, train_loader


def share_for_scoring(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Simulation only: leave the batch this node trained on where the audit scores its reconstruction
    (after the attack has returned). A real deployment has no such mod."""
    if not context.run_config["evaluation"]:
        return call_next(message, context)
    return SharedBatches(shared_folder(context.run_config)).mod()(message, context, call_next)


app = ClientApp(mods=[share_for_scoring])


@app.train()
def fit(message: Message, context: Context) -> Message:
    cfg = context.run_config
    partition, partitions = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    images, labels = client_data(cfg, partition, partitions)
    model = Net()
    model.load_state_dict(message.content["arrays"].to_torch_state_dict())
    loader = train_loader(images, labels, batch_size=int(cfg["batch-size"]))
    loss = train(model, loader, epochs=int(cfg["local-epochs"]), lr=float(message.content["config"]["learning-rate"]),
                 momentum=float(cfg["momentum"]), weight_decay=float(cfg["weight-decay"]))
    record_batch(context, message, images, labels)  # for the scoring mod above (images in [0, 1])
    metrics = MetricRecord({"num-examples": len(labels), "train-loss": loss, "partition-id": partition})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=message)
