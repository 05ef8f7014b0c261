"""A Flower app whose ServerApp audits what it receives with fedleak (see README.md)."""
