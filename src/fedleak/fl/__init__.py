"""Federated-learning clients and the :class:`Payload` they send to the server."""

from fedleak.fl import modifications, trap  # noqa: F401  (fill the server-modification registry)
from fedleak.fl.client import Client, normalize
from fedleak.fl.payload import ClientData, ClientTraining, Payload, PublicHyperparameters, client_training
from fedleak.fl.protocols import PROTOCOLS

__all__ = ["PROTOCOLS", "Client", "ClientData", "ClientTraining", "Payload", "PublicHyperparameters",
           "client_training", "normalize"]
