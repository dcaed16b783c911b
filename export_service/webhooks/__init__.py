"""Completion webhooks (contract §11): subscriptions, the outbox, signing and delivery."""
