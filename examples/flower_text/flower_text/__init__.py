"""A Flower app fine-tuning a small GPT-2 with LoRA on PII sentences, audited by fedleak (see README.md)."""
