"""mmolove-relay: a local, durable, signing relay between a game server and MMOLove.

Game servers POST plain JSON events to the relay on localhost; the relay stores each one
in a SQLite outbox before answering, then signs and delivers it to MMOLove.
"""

__version__ = "0.2.0"
