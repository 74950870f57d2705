"""Alerts: rules that watch delivery and the outbox, and the targets their messages go to."""
