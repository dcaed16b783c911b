"""Completion webhooks (DESIGN §11): subscriptions, the outbox, signing and delivery."""
