"""The outbox: one contract (``contract``), two backends (``sqlite``, ``postgres``)."""
