"""Federated-learning clients and the :class:`Payload` they send to the server."""

from fedleak.fl.client import Client, normalize
from fedleak.fl.payload import ClientData, Payload, PublicHyperparameters
from fedleak.fl.protocols import PROTOCOLS

__all__ = ["PROTOCOLS", "Client", "ClientData", "Payload", "PublicHyperparameters", "normalize"]
